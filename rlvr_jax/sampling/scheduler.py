"""Continuous batching, host side: admits pending samples into free decode slots between segments.

The queue holds every sample `(prompt, sample index)` in prompt-major order. Each round:
  1. harvest slots whose sample finished (copy its tokens out, free the slot);
  2. plan the shapes: while samples are pending the slot count stays fixed; once the queue is empty
     and at most half the slots are live, the live ones are compacted into half as many slots (a quarter,
     ... as far as they fit: the long tail of RL lengths runs on smaller programs), never below
     `MIN_SLOTS_PER_SHARD` per batch shard. The cache window is the bucketed length the live rows can
     reach within two segments (`buckets.bucket_length`);
  3. refill: the next pending samples take the free slots, their distinct prompts prefilled once (the
     prefix common to every prompt of the call, found once per call: `engine.shared_prefix`; each prompt's
     own tokens padded to their own bucket, `prefill_length`; prompts of very different lengths in
     separate batches, `prefill_parts`);
  4. run one decode segment (up to `steps` tokens; it returns early once `refill_at` slots are free).
Shapes are bucketed (slots: powers of two times the mesh's batch shards; windows and prompt lengths:
`2^k` or `3 * 2^k`), so a run compiles a handful of programs, cached across calls.
"""

from __future__ import annotations

import collections
import dataclasses

import jax
import numpy as np

from rlvr_jax import sharding as shd
from rlvr_jax.distributed import to_host
from rlvr_jax.sampling import buckets, engine
from rlvr_jax.sampling import decode_step as dstep
from rlvr_jax.sampling.progress import ProgressBar

# Decode steps per segment at most: long enough to amortise the host round trip (a device sync and
# a few small programs), short enough that the window tracks the longest live row closely.
SEGMENT_STEPS = 32
# Compaction stops at this many slots per batch shard. Below it a decode step costs about the same
# (it reads every weight once whatever the rows), while each smaller slot count is one more set of
# compiled programs held for the rest of the run (25-40 MiB each on a CPU, where the demo had compiled
# 2- and 1-slot programs late in training). 8, not 4, since compaction halves: at 4 the demo's 8-slot
# rollouts compacted into 4 slots and compiled a 4-slot program per window, for no faster steps.
MIN_SLOTS_PER_SHARD = 8
# A refill's prompts are prefilled in up to this many batches, each padded to its own longest prompt, when
# that computes at most PREFILL_SPLIT_GAIN of the positions of one batch (`prefill_parts`).
MAX_PREFILL_PARTS = 3
PREFILL_SPLIT_GAIN = 0.75


@dataclasses.dataclass(frozen=True)
class Plan:
    """Static settings of one `run` (see `api.generate` for the meaning of each)."""

    n: int
    max_new_tokens: int
    slots: int  # decode slots (already bucketed to a multiple of the batch shards)
    multiple: int  # batch shards of the mesh: every slot and prefill count is a multiple of it
    min_prompt_bucket: int
    cache_dtype: str
    steps: int = SEGMENT_STEPS


@dataclasses.dataclass
class Stats:
    """Schedule counters of one `run` (for benchmarks).

    Attributes:
      segments, refills, compactions: device programs of each kind run (a compaction moves the live
      rows into half as many slots, or fewer). decode_steps: decode steps run (all slots).
      slot_steps: decode steps x slots computed. tokens: tokens of the finished samples, `samples` of
        them (each sample's first token comes from the prefill, the others from decode steps).
    """

    segments: int = 0
    refills: int = 0
    compactions: int = 0
    decode_steps: int = 0
    slot_steps: int = 0
    tokens: int = 0
    samples: int = 0

    def utilisation(self) -> float:
        """Fraction of computed slot-steps that produced a token of a running sample."""
        return (self.tokens - self.samples) / max(self.slot_steps, 1)


def run(params, cfg, prompts, plan: Plan, sample: dict, *, sharder=None, progress=True,
        stats: Stats | None = None) -> dict:
    """Samples `len(prompts) * plan.n` rows by continuous batching.

    Args:
      params: params pytree (placed by the caller). cfg: its ModelConfig.
      prompts: token-id lists (non-empty).
      plan: shapes and sizes. sample: `controls`, `seed`, `temperature`, `top_p`, `stop_ids`.
      sharder: mesh + rules; slots are split over the batch axes.
      progress: show a bar of rows finished / total with tokens/s; or a callable told the rows finished.
      stats: optional counters, filled in.

    Returns:
      numpy `tokens` int32 `[N, t]`, `logprobs` float32 `[N, t]`, `lengths` int32 `[N]`, `stopped` bool `[N]`.
    """
    stats = stats if stats is not None else Stats()
    t, n_rows = plan.max_new_tokens, len(prompts) * plan.n
    out = dict(tokens=np.zeros((n_rows, t), np.int32), logprobs=np.zeros((n_rows, t), np.float32),
               lengths=np.zeros((n_rows,), np.int32), stopped=np.zeros((n_rows,), bool))
    pending = collections.deque(range(n_rows))
    dparams = engine.decode_params(params, cfg)
    platform = next(iter(jax.tree.leaves(dparams)[0].sharding.device_set)).platform
    # Computed over the whole call, not per refill: one value (one set of prefill and insert programs) for
    # every refill, whichever prompts it happens to take.
    shared = engine.shared_prefix(prompts)
    slot_row = np.full(plan.slots, -1, np.int64)  # global row held by each slot, -1 = free
    fill = np.zeros(plan.slots, np.int64)
    state = None
    with ProgressBar(n_rows, enabled=progress) as bar:
        while True:
            take = [pending.popleft() for _ in range(min(len(pending), int(np.sum(slot_row < 0))))]
            slots = len(slot_row)
            state, slot_row, fill = _shape(state, cfg, prompts, plan, slot_row, fill, take, pending, sharder)
            stats.compactions += int(len(slot_row) < slots)
            if take:
                state, slot_row, fill = _refill(params, cfg, state, prompts, plan, sample, slot_row, fill, take,
                                                shared, sharder)
                stats.refills += 1
            if np.all(slot_row < 0):
                break
            state = engine.segment(dparams, state, np.int32(_refill_at(plan, slot_row, pending)), *_traced(sample),
                                   cfg=cfg, controls=sample["controls"], steps=plan.steps, sharder=sharder,
                                   small_dots=engine.small_dots(len(slot_row) // plan.multiple, platform))
            snap = to_host({k: state[k] for k in ("done", "fill", "count")})
            stats.segments += 1
            # Live slots only: a free slot's device row is whatever `reshape` or the last sample left there.
            steps_run = int(np.max((snap["fill"] - fill)[slot_row >= 0], initial=0))
            stats.decode_steps += steps_run
            stats.slot_steps += len(slot_row) * steps_run
            finished = (slot_row >= 0) & snap["done"]
            if not (take or finished.any() or not np.array_equal(snap["fill"], fill)):
                raise RuntimeError("rollout scheduler made no progress (a bug): no slot advanced or finished")
            fill = snap["fill"].astype(np.int64)
            if finished.any():
                stats.tokens += _harvest(state, slot_row, finished, out)
                stats.samples += int(finished.sum())
                slot_row[finished] = -1
                bar.update(int(finished.sum()), int(out["lengths"].sum()))
    return out


def _traced(sample: dict) -> tuple:
    return (np.uint32(sample["seed"]), np.float32(sample["temperature"]), np.float32(sample["top_p"]),
            sample["stop_ids"])


def _refill_at(plan: Plan, slot_row, pending) -> int:
    """Done slots at which a segment returns: enough free slots to be worth a refill or a compaction."""
    s = len(slot_row)
    if pending:
        return max(1, min(len(pending), s // 8))
    return s - _compact_below(s, plan.multiple)


def _compact_below(s: int, multiple: int) -> int:
    """Live rows at or below which `s` slots are compacted into `s // 2` slots; 0 = never.

    Halves, one level at a time (64 -> 32 -> 16 -> 8), so an evaluation and the training rollouts
    share their tail programs and a run compiles no new ones as its responses shorten. Halves rather
    than quarters: a CPU decode step costs more the more rows it computes (compute-bound here), and with
    quarters a batch whose rows are still half live ran at full width until only a quarter were left
    (a third of the slot-steps on finished rows on the realistic RL workload, BENCHMARKS.md).
    """
    half = s // 2
    even = 2 * half == s and half % multiple == 0  # every shard keeps the same number of slots
    return half if even and half >= MIN_SLOTS_PER_SHARD * multiple else 0


def _compacted(s: int, live: int, multiple: int) -> int:
    """Slots for `live` rows once the queue is empty: `s` halved while they still fit (several levels at once)."""
    while 0 < live <= _compact_below(s, multiple):
        s = _compact_below(s, multiple)
    return s


def _harvest(state, slot_row, finished, out) -> int:
    """Copies finished samples to `out`; returns their token count."""
    host = to_host({k: state[k] for k in ("out_tok", "out_lp", "count", "stopped")})
    slots = np.nonzero(finished)[0]
    rows = slot_row[slots]
    out["tokens"][rows] = host["out_tok"][slots]
    out["logprobs"][rows] = host["out_lp"][slots]
    out["lengths"][rows] = host["count"][slots]
    out["stopped"][rows] = host["stopped"][slots]
    return int(host["count"][slots].sum())


def _shape(state, cfg, prompts, plan: Plan, slot_row, fill, take, pending, sharder):
    """Compacts slots once the queue is drained, and fits the window to the rows about to run."""
    s = len(slot_row)
    live = np.nonzero(slot_row >= 0)[0]
    if not pending:
        s = _compacted(s, len(live) + len(take), plan.multiple)
    plen = lambda r: len(prompts[r // plan.n])
    # Two segments ahead, not one: the window changes shape half as often (each window is a segment and
    # a reshape program more), for attention over at most one segment's worth of slots that are empty.
    # A short generation (the CPU demo's 64 tokens) then runs in one window from its first step.
    horizon = 2 * plan.steps
    reach = [min(fill[i] + horizon, plen(slot_row[i]) + plan.max_new_tokens - 1) for i in live]
    reach += [buckets.bucket_length(max(plen(r) for r in take), minimum=plan.min_prompt_bucket)] if take else []
    reach += [min(plen(r) + horizon, plen(r) + plan.max_new_tokens - 1) for r in take]
    window = buckets.bucket_length(max(reach, default=1), minimum=plan.min_prompt_bucket)
    if state is not None and window <= (current := dstep.window(state["cache"])) < 2 * window:
        window = current  # shrink only by half or more: fewer copies and programs for a few % of reads
    if state is None:
        state = engine.init_state(cfg=cfg, slots=s, window=window, max_new_tokens=plan.max_new_tokens,
                                  cache_dtype=plan.cache_dtype, sharder=sharder)
    elif s != len(slot_row) or window != dstep.window(state["cache"]):
        src = np.arange(len(slot_row)) if s == len(slot_row) else np.concatenate([live, np.full(s - len(live), -1)])
        state = engine.reshape(state, src.astype(np.int32), window=window, sharder=sharder)
        keep = src >= 0
        slot_row = np.where(keep, slot_row[np.maximum(src, 0)], -1)
        fill = np.where(keep, fill[np.maximum(src, 0)], 0)
    return state, slot_row, fill


def prefill_length(longest: int, shared: int, minimum: int) -> int:
    """Prefill buffer length `p` for prompts of at most `longest` tokens whose first `shared` are prefilled once.

    Each row computes `p - shared` positions, so that part is bucketed on its own: the CPU demo's held-out
    prompts (41 tokens, 28 shared) compute 16 positions a row instead of the 48 - 28 = 20 of a bucketed
    `p` (or 32 with the prefix rounded to 16). Never above the bucket of `longest`: the window that
    `insert` writes into is at least that.
    """
    whole = buckets.bucket_length(longest, minimum=minimum)
    return min(whole, shared + buckets.bucket_length(longest - shared, minimum=minimum)) if shared else whole


def _refill(params, cfg, state, prompts, plan: Plan, sample: dict, slot_row, fill, take, shared: int, sharder):
    """Prefills the distinct prompts of the samples `take` once and inserts each sample into a free slot.

    Prompts of very different lengths are prefilled in separate batches (`prefill_parts`), so the short
    ones are not padded to the longest.
    """
    ids = sorted({r // plan.n for r in take}, key=lambda i: (-len(prompts[i]), i))
    parts = prefill_parts([len(prompts[i]) for i in ids], shared, plan.multiple, plan.min_prompt_bucket)
    place = np.nonzero(slot_row < 0)[0][:len(take)]
    slot_row, fill, a = slot_row.copy(), fill.copy(), 0
    for size in parts:
        part = set(ids[a:a + size])
        a += size
        mine = [j for j, r in enumerate(take) if r // plan.n in part]
        state = _prefill_and_insert(params, cfg, state, prompts, plan, sample, sorted(part),
                                    [take[j] for j in mine], place[mine], len(slot_row), shared, sharder)
        slot_row[place[mine]] = [take[j] for j in mine]
        fill[place[mine]] = [len(prompts[take[j] // plan.n]) for j in mine]
    return state, slot_row, fill


def prefill_parts(lengths, shared: int, multiple: int, minimum: int) -> list[int]:
    """Sizes of the prefill batches for prompts of `lengths` (longest first), each padded to its own length.

    One batch pads every prompt to the longest (`prefill_length`) and runs `bucket_count(m)` rows. The
    longest prompts are split off into a batch of their own while that computes at most `PREFILL_SPLIT_GAIN`
    of the positions (at most `MAX_PREFILL_PARTS` batches): the realistic RL workload's one 431-token
    MATH500 prompt padded seven prompts of 45-142 tokens to 512 positions.
    """
    p = [prefill_length(n, shared, minimum) for n in lengths]
    cost = lambda a, z: buckets.bucket_count(z - a, multiple=multiple) * p[a]  # prompts a..z-1, longest first
    start, parts = 0, []
    while len(parts) < MAX_PREFILL_PARTS - 1:
        # Only where the buckets differ: a split of one length saves bucket padding rows, not a batch's worth.
        cuts = [k for k in range(start + 1, len(p)) if p[k] < p[start]]
        split = min(cuts, key=lambda k: (cost(start, k) + cost(k, len(p)), k), default=0)
        if not split or cost(start, split) + cost(split, len(p)) > PREFILL_SPLIT_GAIN * cost(start, len(p)):
            break
        parts.append(split - start)
        start = split
    return parts + [len(p) - start]


def _prefill_and_insert(params, cfg, state, prompts, plan: Plan, sample: dict, ids_m, take, free, slots: int,
                        shared: int, sharder):
    """Prefills prompts `ids_m` once and inserts sample `take[j]` (one of theirs) into slot `free[j]`."""
    m = buckets.bucket_count(len(ids_m), multiple=plan.multiple)
    p = prefill_length(max(len(prompts[i]) for i in ids_m), shared, plan.min_prompt_bucket)
    ids_mp = np.zeros((m, p), np.int32)
    len_m = np.ones((m,), np.int32)  # bucket padding: one pad token, so no row is empty
    for j, i in enumerate(ids_m):
        ids_mp[j, :len(prompts[i])], len_m[j] = prompts[i], len(prompts[i])
    ids_dev = ids_mp if sharder is None else jax.device_put(ids_mp, sharder.sharding((shd.ACT_BATCH, None), (m, p)))
    prefix, logits_mv = engine.prefill(params, ids_dev, len_m, cfg=cfg, cache_dtype=plan.cache_dtype,
                                       sharder=sharder, shared=shared)
    r = buckets.bucket_count(len(take))
    slot_r = np.full(r, slots, np.int32)  # padding entries point past the last slot: dropped
    src_r, row_r = np.zeros(r, np.int32), np.zeros(r, np.int32)
    where = {i: j for j, i in enumerate(ids_m)}
    slot_r[:len(take)], row_r[:len(take)] = free, take
    src_r[:len(take)] = [where[x // plan.n] for x in take]
    return engine.insert(state, prefix, logits_mv, len_m, slot_r, src_r, row_r, *_traced(sample),
                         controls=sample["controls"], sharder=sharder)
