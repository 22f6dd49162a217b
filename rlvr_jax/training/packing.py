"""Sequence packing for the log-prob and update passes: compute on real tokens, in token-budget micro-batches.

The padded layout (`logprobs.py`) gives every sequence `P + R` slots; on long-tailed RL lengths most of
them are padding. Here each sequence's real tokens (prompt + response, `attention_mask == 1`, in order)
are laid end to end in rows of `row_len` tokens, chosen by first-fit-decreasing (deterministic: ties
broken by batch index). Each token carries a segment id (1, 2, ... per sequence of its row, 0 for row
padding) and its RoPE position within its own sequence; attention is block-diagonal causal
(`transformer.decoder_stack_packed`). A micro-batch gives every device at most `max_tokens_per_micro_batch`
tokens (`row_layout`), so micro-batches hold a token budget, not a row count.

With `share_prompts` the sequences of a batch that have the same prompt (a GRPO group's n samples) share
one copy of it per row: `[prompt, response 1, ..., response k]`, each response its own segment with the
prompt's as parent (it attends to the prompt and to itself), RoPE positions continuing the prompt's,
and its first token predicted from the prompt's last position. On RL batches, where a prompt is often as
long as a response, that computes about half the tokens.

Shapes are bucketed so a run compiles a handful of programs: `row_len` in eighths of a power of two
(`_row_bucket`: 256, 320, 384, ...), the logit positions per row `Q` in powers of two and 1.5x them
(`_bucket`), sequence slots per row `S` and micro-batches per group `M` in powers of two. Of the row
lengths from the shortest that holds the longest sequence up to twice it (`row_candidates`), the plan
keeps the layout with the lowest modelled cost (`pass_costs`), favouring shapes already compiled.
Micro-batches past the last real one are skipped at run time (`lax.cond`), so the bucket costs nothing.

Plan arrays (host NumPy) have leading `[rows, G, M]`: row within a micro-batch (sharded along the batch
mesh axes, so every device computes its own rows), group (the update's mini-batch; 1 for log-prob
passes), micro-batch. Only the positions that predict a response token are projected to the vocabulary:
`logit_index [.., Q]` lists them per row (Q, a bucket, bounds a row's response tokens; on RL
batches about half a row is prompt), so the logits, the softmax over the vocabulary and their backward
pass never run on prompt or padding positions. Results come back in the padded `[B, R]` response layout
through two more indices: `resp_index [.., S, R]` (entry of `logit_index` that predicts response token
t of slot s) and `seq_index [.., S]` (the batch row each slot holds).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from rlvr_jax import sharding as shd
from rlvr_jax.models import transformer
from rlvr_jax.models.config import ModelConfig
from rlvr_jax.training.logprobs import logprobs_from_hidden

# Rows never shorter than this (when the budget allows): below ~256 tokens a row's t x t attention costs
# little next to its matmuls, and short rows would leave most bins holding one sequence.
MIN_ROW_LEN = 256

PLAN_KEYS = ("tokens", "positions", "segment_ids", "parent_ids", "logit_index", "targets", "resp_index",
             "seq_index", "slot_valid")
# The plan arrays `packed_logprobs` takes, in its argument order.
PACKED_INPUTS = ("tokens", "positions", "segment_ids", "parent_ids", "logit_index", "targets", "resp_index")


def _pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def first_fit_decreasing(lengths, capacity: int) -> list[list[int]]:
    """Bins (lists of item indices) of total length <= capacity; longest items first, ties by index.

    Raises:
      ValueError: an item longer than `capacity`.
    """
    lengths = np.asarray(lengths, np.int64)
    if lengths.size and lengths.max() > capacity:
        raise ValueError(f"a sequence of {int(lengths.max())} tokens does not fit a row of {capacity}")
    order = sorted(range(len(lengths)), key=lambda i: (-int(lengths[i]), i))
    free = np.zeros(len(lengths), np.int64)  # at most one bin per item
    bins: list[list[int]] = []
    for i in order:
        fits = np.flatnonzero(free[: len(bins)] >= lengths[i])
        if fits.size:
            j = int(fits[0])
        else:
            j = len(bins)
            bins.append([])
            free[j] = capacity
        bins[j].append(i)
        free[j] -= lengths[i]
    return bins


@dataclasses.dataclass(frozen=True)
class PackedPlan:
    """Where every sequence of a batch sits in packed rows (see the module docstring for the layout).

    Attributes:
      tokens, positions, segment_ids: `[rows, G, M, T]` int32. parent_ids: `[rows, G, M, T]` int32, the
        segment a token may also attend to (a shared prompt's), 0 for none.
      logit_index: `[rows, G, M, Q]` int32 row positions whose next-token log-probs are needed, in row
        order; 0 past a row's last one. targets: `[rows, G, M, Q]` int32, the token each of them predicts
        (not always the next one in the row: a shared prompt's last position predicts every response's first).
      resp_index: `[rows, G, M, S, R]` int32 entry of `logit_index` predicting response token t of slot
        s; 0 where that token does not exist.
      seq_index: `[rows, G, M, S]` int32 batch row of each slot (0 for empty slots).
      slot_valid: `[rows, G, M, S]` bool.
      real_tokens: real tokens laid out (all groups; a shared prompt counts once).
      micro_batches: `[G]` micro-batches in use per group.
    """

    tokens: np.ndarray
    positions: np.ndarray
    segment_ids: np.ndarray
    parent_ids: np.ndarray
    logit_index: np.ndarray
    targets: np.ndarray
    resp_index: np.ndarray
    seq_index: np.ndarray
    slot_valid: np.ndarray
    real_tokens: int
    micro_batches: tuple[int, ...]

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k) for k in PLAN_KEYS}

    @property
    def computed_tokens(self) -> int:
        """Token slots the forward passes compute (micro-batches in use x rows x row_len)."""
        rows, _, _, t = self.tokens.shape
        return sum(self.micro_batches) * rows * t


def _bucket(n: int) -> int:
    """Smallest of 1, 2, 3, 4, 6, 8, 12, 16, 24, ... (powers of two and 1.5x them) >= n: <= 33% waste."""
    p = _pow2(n)
    return 3 * p // 4 if p >= 4 and 3 * p // 4 >= n else p


def _row_bucket(n: int) -> int:
    """Row lengths: multiples of a quarter of the power of two below (256, 320, 384, 448, 512, 640, ...): <= 25%
    waste; below 16 the powers of two."""
    p = _pow2(n)
    step = max(1, p // 8) if p >= 16 else p
    return -(-n // step) * step


def row_layout(longest: int, max_tokens_per_micro_batch: int, row_multiple: int, bins: int | None = None,
               row_len: int | None = None):
    """`(row_len, rows per micro-batch)` for a batch whose longest sequence has `longest` tokens.

    The budget is per device (like verl's `ppo_max_token_len_per_gpu`): a micro-batch has `row_multiple`
    (the batch-sharding device count) times at most `max(1, budget // row_len)` rows, and no more than
    the bucketed rows `bins` filled rows need. `row_len` (unless given: `row_candidates`' first) is the
    smallest row bucket (`_row_bucket`) >= `longest`, and at least `MIN_ROW_LEN` when the budget allows; a
    sequence longer than the budget still gets one row per device (the budget is then exceeded, never
    the sequence cut).
    """
    if max_tokens_per_micro_batch < 1 or row_multiple < 1:
        raise ValueError("max_tokens_per_micro_batch and row_multiple must be >= 1")
    row_len = row_len or row_candidates(longest, max_tokens_per_micro_batch)[0]
    per_device = max(1, max_tokens_per_micro_batch // row_len)
    if bins is not None:
        per_device = min(per_device, _bucket(math.ceil(bins / row_multiple)))
    return row_len, per_device * row_multiple


def row_candidates(longest: int, max_tokens_per_micro_batch: int, upto: int | None = None) -> list[int]:
    """Row lengths a plan may choose: buckets from the shortest that holds `longest` (and `MIN_ROW_LEN`
    when the budget allows) up to the budget, no longer than the first that holds `upto` tokens, and at
    most twice the shortest (a longer row's `t^2` attention rarely pays, and it bounds the memory plan)."""
    floor = min(MIN_ROW_LEN, _pow2(max_tokens_per_micro_batch + 1) // 2)
    out = [_row_bucket(max(longest, floor, 1))]
    while out[-1] < min(max_tokens_per_micro_batch, upto or 0, 2 * out[0]):
        out.append(_row_bucket(out[-1] + 1))
    return [c for c in out if c <= max_tokens_per_micro_batch] or out[:1]


# The dense masked attention's FLOPs (scores, mask, softmax over `[heads, t, t]` and their backward)
# take ~2.5x the time of the matmuls' per FLOP (SmolLM2-135M update, float32 on CPU: one row of 768
# against three of 256, the same token slots, 9.0 vs 7.0 s), so `pass_costs` weighs them so.
ATTENTION_COST = 2.5
# A row shape (rows x row length) a run has not compiled yet must beat the best compiled one by this factor
# of modelled cost: on CPU a new update program compiles in ~2-3 s, about a third of a demo update step.
NEW_SHAPE_COST = 1.2


def pass_costs(cfg: ModelConfig) -> tuple[float, float, float]:
    """Relative cost of a packed pass per token slot (the layers' matmul FLOPs), per token slot and row
    position (the dense attention's, times `ATTENTION_COST`) and per projected logit position (the lm
    head's): what `plan_packing` weighs row layouts by."""
    d, f, l = cfg.hidden_size, cfg.intermediate_size, cfg.num_layers
    qd, kd = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    return 2.0 * l * (2 * d * qd + 2 * d * kd + 3 * d * f), ATTENTION_COST * 4.0 * l * qd, 2.0 * d * cfg.vocab_size


def _units(ids, mask, p: int, rows_g, row_len: int, share: bool) -> list[tuple[int, list[int]]]:
    """What gets laid out contiguously: `(prompt owner, members)`, members' responses after one prompt copy.

    Without sharing every sequence is its own unit. With it, sequences whose real prompt tokens are equal
    form a family; its responses are split first-fit-decreasing into units that each fit a row after one
    copy of the prompt (a GRPO group's n samples usually make one unit).
    """
    if not share:
        return [(int(i), [int(i)]) for i in rows_g]
    families: dict[bytes, list[int]] = {}
    for i in rows_g:
        families.setdefault(ids[i, :p][mask[i, :p]].tobytes(), []).append(int(i))
    units = []
    for members in families.values():
        prompt_len = int(mask[members[0], :p].sum())
        resp = mask[members, p:].sum(axis=1)
        for chunk in first_fit_decreasing(resp, row_len - prompt_len):
            units.append((members[0], [members[j] for j in sorted(chunk)]))
    return units


def plan_packing(
    input_ids, attention_mask, response_len: int, *, groups=None, max_tokens_per_micro_batch: int,
    row_multiple: int = 1, share_prompts: bool = False, costs: tuple[float, float, float] | None = None,
    known_shapes=(),
) -> PackedPlan:
    """Packs the sequences of a padded batch into token-budget micro-batches (host, deterministic).

    Args:
      input_ids, attention_mask: `[B, P+R]` padded batch (prompt left-padded, response right-padded).
      response_len: R.
      groups: sequences packed separately (the update's mini-batches), a list of index arrays; default
        one group of all rows.
      max_tokens_per_micro_batch: token budget of one micro-batch per device (`row_layout`).
      row_multiple: devices sharing the batch; each gets the same number of rows per micro-batch.
      share_prompts: sequences of a group with the same prompt share one copy of it in a row: each
        response is its own segment whose parent is the prompt's (`transformer.segment_attention_mask`),
        so it sees the prompt and itself, at the positions it has in its own sequence. A family longer
        than a row is split first-fit-decreasing, one prompt copy per part.
      costs: `pass_costs(cfg)` of the model: the row length is the candidate (`row_candidates`) whose
        layout has the lowest modelled cost. Default: token slots only.
      known_shapes: `(rows, row_len)` pairs already compiled (`ShapeRatchet.shapes`); when given, another
        shape's cost counts `NEW_SHAPE_COST` times.

    Raises:
      ValueError: a sequence with response tokens but no real prompt token (nothing predicts its first
        response token), or a row budget below 1.
    """
    ids, mask = np.asarray(input_ids), np.asarray(attention_mask) > 0
    b, length = ids.shape
    p = length - response_len
    if p < 1:
        raise ValueError(f"need at least one prompt slot: sequence {length}, response {response_len}")
    no_prompt = ~mask[:, :p].any(axis=1) & mask[:, p:].any(axis=1)
    if no_prompt.any():
        raise ValueError(f"rows {np.flatnonzero(no_prompt)[:8].tolist()} have response tokens but no prompt token")
    groups = [np.arange(b)] if groups is None else [np.asarray(g) for g in groups]
    lengths, resp_lengths = mask.sum(axis=1), mask[:, p:].sum(axis=1)
    unit_len = lambda u: int(mask[u[0], :p].sum() + resp_lengths[u[1]].sum())  # noqa: E731
    costs = costs or (1.0, 0.0, 0.0)

    def layout(row_len: int):
        """Units, bins, rows per micro-batch, `(M, S, Q)` and the modelled cost of rows of `row_len`."""
        units = [_units(ids, mask, p, g, row_len, share_prompts) for g in groups]
        bins = [[[ug[k] for k in bin_] for bin_ in first_fit_decreasing([unit_len(u) for u in ug], row_len)]
                for ug in units]
        _, rows = row_layout(row_len, max_tokens_per_micro_batch, row_multiple, bins=max(len(bg) for bg in bins),
                             row_len=row_len)
        used = sum(math.ceil(len(bg) / rows) for bg in bins)  # micro-batches that run (the rest are skipped)
        m = _pow2(max(1, max(math.ceil(len(bg) / rows) for bg in bins)))
        s = _pow2(max([sum(len(u[1]) for u in bin_) for bg in bins for bin_ in bg] or [1]))
        q = _bucket(max([sum(int(resp_lengths[u[1]].sum()) for u in bin_) for bg in bins for bin_ in bg] or [1]))
        token, key, logit = costs
        cost = used * rows * (row_len * (token + key * row_len) + q * logit)
        if known_shapes and (rows, row_len) not in known_shapes:
            cost *= NEW_SHAPE_COST
        return cost, row_len, units, bins, rows, (m, s, q)

    # Every row bucket from the shortest that holds the longest sequence up to one that holds a whole group
    # of `groups` (at most twice the shortest) is weighed by what it would compute (token slots, t^2 attention, logits):
    # shared prompts make a group's family longer than any one sequence, and one longer row often holds it
    # in fewer slots than several short rows that each repeat the prompt. Ties keep the shorter rows.
    upto = max(sum(unit_len(u) for u in _units(ids, mask, p, g, 1 << 62, share_prompts)) for g in groups)
    candidates = row_candidates(int(lengths.max(initial=1)), max_tokens_per_micro_batch, upto)
    _, row_len, units, bins, rows, (m, s, q) = min((layout(c) for c in candidates), key=lambda x: (x[0], x[1]))
    shape = (rows, len(groups), m)
    out = {k: np.zeros(shape + (row_len,), np.int32) for k in ("tokens", "positions", "segment_ids", "parent_ids")}
    logit_index = np.zeros(shape + (q,), np.int32)
    targets = np.zeros(shape + (q,), np.int32)
    resp_index = np.zeros(shape + (s, response_len), np.int32)
    seq_index = np.zeros(shape + (s,), np.int32)
    slot_valid = np.zeros(shape + (s,), bool)
    for g, bg in enumerate(bins):
        for j, bin_ in enumerate(bg):
            at = (j % rows, g, j // rows)
            start = used = slot = 0
            seg = 1
            for owner, members in bin_:
                prompt = ids[owner, :p][mask[owner, :p]]
                n_p = len(prompt)
                out["tokens"][at][start : start + n_p] = prompt
                out["positions"][at][start : start + n_p] = np.arange(n_p)
                out["segment_ids"][at][start : start + n_p] = seg
                shared, prompt_seg, last = len(members) > 1, seg, start + n_p - 1
                start += n_p
                for i in members:
                    k, response = int(resp_lengths[i]), ids[i, p:][mask[i, p:]]
                    if shared:  # each response its own segment, the prompt's as parent
                        seg += 1
                        out["parent_ids"][at][start : start + k] = prompt_seg
                    out["tokens"][at][start : start + k] = response
                    out["positions"][at][start : start + k] = n_p + np.arange(k)
                    out["segment_ids"][at][start : start + k] = seg
                    # Response token t is predicted by the token before it: the prompt's last for t = 0.
                    logit_index[at][used : used + k] = np.concatenate([[last], start + np.arange(k - 1)])[:k]
                    targets[at][used : used + k] = response
                    real_t = mask[i, p:]
                    resp_index[at][slot] = np.where(real_t, used + np.cumsum(real_t) - 1, 0)
                    seq_index[at][slot], slot_valid[at][slot] = i, True
                    start, used, slot = start + k, used + k, slot + 1
                seg += 1
    micro = tuple(math.ceil(len(bg) / rows) for bg in bins)
    return PackedPlan(**out, logit_index=logit_index, targets=targets, resp_index=resp_index, seq_index=seq_index,
                      slot_valid=slot_valid, real_tokens=sum(unit_len(u) for ug in units for u in ug),
                      micro_batches=micro)


def batch_shards(sharder: shd.Sharder | None) -> int:
    """Devices the batch rows are split over (the mesh axes `ACT_BATCH` maps to); 1 without a sharder."""
    if sharder is None:
        return 1
    axes = dict(sharder.rules).get(shd.ACT_BATCH) or ()
    axes = (axes,) if isinstance(axes, str) else tuple(axes)
    return math.prod(sharder.mesh.shape[a] for a in axes)


def packed_logprobs(
    params, cfg: ModelConfig, tokens_rt, positions_rt, segment_ids_rt, parent_ids_rt, logit_index_rq, targets_rq,
    resp_index_rsr, *, temperature: float, chunk: int, with_entropy: bool, sharder=None,
):
    """Differentiable log-probs (and entropy) of the response tokens of one packed micro-batch.

    Args:
      tokens_rt, positions_rt, segment_ids_rt, parent_ids_rt: `[rows, T]` packed rows (`PackedPlan`).
      logit_index_rq, targets_rq: `[rows, Q]` positions to project and the token each predicts.
      resp_index_rsr: `[rows, S, R]`.
      temperature, chunk, with_entropy, sharder: as `logprobs.logprobs_from_hidden`.

    Returns:
      `(logp, entropy or None)`, float32 `[rows * S, R]` in the padded response layout (slots holding
      no token carry finite garbage).
    """
    tokens_rt = tokens_rt.astype(jnp.int32)
    h_rtd = transformer.decoder_stack_packed(params, cfg, tokens_rt, positions_rt, segment_ids_rt,
                                             parent_ids_bt=parent_ids_rt, sharder=sharder)
    w, w_spec = transformer.lm_head(params, cfg)
    # Only the positions that predict a response token are projected to the vocabulary.
    h_rqd = jnp.take_along_axis(h_rtd, logit_index_rq[:, :, None], axis=1)
    logp_rq, ent_rq = logprobs_from_hidden(h_rqd, w.astype(h_rqd.dtype), targets_rq, temperature=temperature,
                                           chunk=chunk, with_entropy=with_entropy, sharder=sharder, w_spec=w_spec)
    rows, s, r = resp_index_rsr.shape
    index = resp_index_rsr.reshape(rows, s * r)
    to_resp = lambda x: jnp.take_along_axis(x, index, axis=1).reshape(rows * s, r)  # noqa: E731
    return to_resp(logp_rq), (to_resp(ent_rq) if with_entropy else None)


def micro_major(x, sharder=None, group: int | None = None):
    """Plan leaf `[rows, G, M, ...]` -> `[M, rows, ...]` of one group (or `[G, M, rows, ...]`), rows sharded."""
    if group is not None:
        x = jnp.moveaxis(x[:, group], 0, 1)
        return shd.constrain(sharder, x, (None, shd.ACT_BATCH) + (None,) * (x.ndim - 2))
    x = jnp.moveaxis(x, 0, 2)
    return shd.constrain(sharder, x, (None, None, shd.ACT_BATCH) + (None,) * (x.ndim - 3))


def skip_if_empty(slot_valid, fn, *args):
    """`fn(*args)`, or zeros of its output when the micro-batch holds no sequence (bucket padding)."""
    out_shape = jax.eval_shape(fn, *args)
    zeros = lambda *_: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), out_shape)  # noqa: E731
    return jax.lax.cond(jnp.any(slot_valid), fn, zeros, *args)


def put_plan(plan: PackedPlan, sharder=None) -> dict:
    """The plan's arrays on device, rows (axis 0) split along the batch mesh axes."""
    from rlvr_jax import distributed

    return distributed.put_rows(plan.arrays(), sharder) if sharder is not None else plan.arrays()


@functools.lru_cache(maxsize=64)
def _packed_logprob_program(cfg, temperature, chunk, with_entropy, sharder):
    """A jitted `(params, plan arrays, response_mask [B, R]) -> {"logp", ["entropy"]}` (shapes: jit's cache)."""

    def run(params, plan, response_mask):
        b, r = response_mask.shape
        xs = {k: micro_major(v, sharder, group=0) for k, v in plan.items()}

        def micro(carry, mb):
            def compute(mb):
                logp, ent = packed_logprobs(
                    params, cfg, *(mb[k] for k in PACKED_INPUTS), temperature=temperature, chunk=chunk,
                    with_entropy=with_entropy, sharder=sharder,
                )
                return {"logp": logp} if ent is None else {"logp": logp, "entropy": ent}

            return carry, skip_if_empty(mb["slot_valid"], compute, mb)

        _, out = jax.lax.scan(micro, None, xs)  # leaves [M, rows * S, R]
        # Scatter slots back to their batch rows; empty slots go to a spare row B that is dropped.
        dest = jnp.where(xs["slot_valid"], xs["seq_index"], b).reshape(-1)
        valid = response_mask > 0
        return {k: jnp.where(valid, jnp.zeros((b + 1, r), v.dtype).at[dest].set(v.reshape(-1, r))[:b], 0.0)
                for k, v in out.items()}

    return jax.jit(run)


def compute_logprobs_packed(
    params, cfg: ModelConfig, batch: dict, *, temperature: float = 1.0, max_tokens_per_micro_batch: int,
    chunk: int = 512, with_entropy: bool = False, sharder: shd.Sharder | None = None,
    ratchet: "ShapeRatchet | None" = None, share_prompts: bool = False,
) -> dict:
    """`logprobs.compute_logprobs` on packed rows: same inputs and outputs, computed on real tokens only.

    Args:
      batch: `input_ids`, `attention_mask` `[B, P+R]` and `response_mask` `[B, R]` (host or device).
      max_tokens_per_micro_batch: token budget of one forward pass, per device.
      ratchet: optional `ShapeRatchet` kept across a run's calls (fewer compiles).
      share_prompts: one copy of a prompt per row for the sequences that have it (`plan_packing`).
      Others: as `compute_logprobs`.

    Returns:
      `{"logp": [B, R] float32}` (+ `"entropy"`), zero where `response_mask` is 0.
    """
    from rlvr_jax import distributed

    ids, attn = distributed.to_host((batch["input_ids"], batch["attention_mask"]))
    r = batch["response_mask"].shape[1]
    plan = plan_packing(ids, attn, r, max_tokens_per_micro_batch=max_tokens_per_micro_batch,
                        row_multiple=batch_shards(sharder), share_prompts=share_prompts, costs=pass_costs(cfg),
                        known_shapes=ratchet.shapes if ratchet is not None else ())
    plan = ratchet(plan) if ratchet is not None else plan
    fn = _packed_logprob_program(cfg, float(temperature), int(chunk), bool(with_entropy), sharder)
    return fn(params, put_plan(plan, sharder), jnp.asarray(batch["response_mask"]))


class ShapeRatchet:
    """Keeps a run's packed shapes from shrinking, so it stops compiling once it has seen its longest batches.

    Micro-batches per group (M), sequence slots per row (S) and logit positions per row (Q) vary with how
    a batch packs; padding a plan up to the largest M, S and Q seen for its other dimensions costs little
    at run time (empty micro-batches are skipped, empty slots are masked, spare logit positions project
    position 0) and reuses the compiled program.
    """

    def __init__(self):
        self._seen: dict[tuple, tuple[int, int]] = {}

    @property
    def shapes(self) -> set[tuple[int, int]]:
        """`(rows, row_len)` of the plans seen so far (`plan_packing`'s `known_shapes`)."""
        return {(rows, t) for rows, _, t, _ in self._seen}

    def __call__(self, plan: PackedPlan) -> PackedPlan:
        rows, g, m, t = plan.tokens.shape
        s, r = plan.resp_index.shape[-2:]
        q = plan.logit_index.shape[-1]
        key = (rows, g, t, r)
        m_max, s_max, q_max = (max(a, b) for a, b in zip(self._seen.get(key, (m, s, q)), (m, s, q)))
        self._seen[key] = (m_max, s_max, q_max)
        if (m_max, s_max, q_max) == (m, s, q):
            return plan

        def pad(x, axis: int | None = None, to: int = 0):
            widths = [(0, 0)] * x.ndim
            widths[2] = (0, m_max - m)
            if axis is not None:
                widths[axis] = (0, to - x.shape[axis])
            return np.pad(x, widths)

        return dataclasses.replace(
            plan, tokens=pad(plan.tokens), positions=pad(plan.positions), segment_ids=pad(plan.segment_ids),
            parent_ids=pad(plan.parent_ids),
            logit_index=pad(plan.logit_index, 3, q_max), targets=pad(plan.targets, 3, q_max),
            resp_index=pad(plan.resp_index, 3, s_max),
            seq_index=pad(plan.seq_index, 3, s_max), slot_valid=pad(plan.slot_valid, 3, s_max))
