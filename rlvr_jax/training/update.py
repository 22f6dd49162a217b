"""The jitted update step: PPO epochs x mini-batches (one optimizer step each) x micro-batches.

On padded rows, one call of `update(state, batch)` runs inside a single jitted program:

  for epoch in range(ppo_epochs):                  lax.scan; rows optionally shuffled per epoch
    for mini_batch in split(batch, n_mini):        lax.scan; one AdamW step per mini-batch
      grads = sum(grad(loss)(micro) for micro in split(mini_batch, n_micro))   lax.scan

Every loss term is aggregated with the *mini-batch's* denominator (`aggregation_denominator`), so
summing micro-batch losses and gradients gives exactly the loss and gradient of the mini-batch
taken whole, in every aggregation mode. A step whose loss or gradient is not finite is skipped
(state unchanged) and reported through the `finite` metric, so a trainer can stop cleanly.

Actor (GRPO or PPO) batch keys, all with rows sharded along `ACT_BATCH`:

  input_ids      [B, P+R] int32   prompt left-padded to P, response right-padded to R
  attention_mask [B, P+R] 0/1     the model's mask
  response_mask  [B, R]   0/1     loss mask over response tokens
  old_logp       [B, R]   f32     rollout-policy log-probs (`compute_logprobs`, same temperature)
  advantages     [B] or [B, R] f32  per-sequence (GRPO) or per-token (GAE) advantages
  ref_logp       [B, R]   f32     reference log-probs; only read when `use_kl_loss`
  rollout_logp   [B, R]   f32     the sampler's own log-probs; only read when `tis_cap > 0`

With `max_tokens_per_micro_batch` the same batch is packed on the host (`packing.py`) into rows of real
tokens, per mini-batch, and micro-batches hold a token budget; losses, denominators and metrics are the
padded ones (log-probs come back in the `[b, R]` layout). That path (`packed_update.py`) loops over the
optimizer steps on the host, a gradient program and an optimizer program each, for memory. With
`fuse_old_logp` (one epoch, one mini-batch) `old_logp` is this forward's own, under a stop-gradient, and
the batch may omit it.

Critic (PPO) batch keys: input_ids, attention_mask, response_mask, old_values [B, R] and
returns [B, R] (see `critic.py`). Other keys are ignored, so one dict can feed both.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from rlvr_jax import sharding as shd
from rlvr_jax.algorithms import ActorLossConfig, actor_loss, aggregation_denominator, truncated_is_weights
from rlvr_jax.models import transformer
from rlvr_jax.models.config import ModelConfig
from rlvr_jax.training import critic as critic_lib
from rlvr_jax.training import packing
from rlvr_jax.training.logprobs import response_logprobs
from rlvr_jax.training.rows import constrain_rows, split_rows
from rlvr_jax.training.state import (
    OptimizerConfig,
    TrainState,
    apply_gradients,
    make_optimizer,
    make_schedule,
    state_shardings,
)

ACTOR_BATCH_KEYS = ("input_ids", "attention_mask", "response_mask", "old_logp", "advantages")

# How a per-micro-batch metric combines over the micro-batches of one mini-batch. Losses computed
# with the mini-batch denominator are shares: they add up. Anything else is a token-mean over the
# micro-batch and is re-weighted by its token count.
SUM_KEYS = frozenset({"loss", "pg_loss", "entropy", "kl", "vf_loss", "num_tokens"})
MIN_KEYS = frozenset({"ratio_min", "tis_weight_min"})
MAX_KEYS = frozenset({"ratio_max", "tis_weight_max"})


@dataclasses.dataclass(frozen=True)
class UpdateConfig:
    """Settings of one update call (hashable). Sizes are in rows (sequences).

    Attributes:
      ppo_epochs: passes over the batch.
      mini_batch_size: rows per optimizer step; None: the whole batch (one step per epoch).
      micro_batch_size: rows per forward/backward (gradient accumulation); None: the mini-batch.
        For sharded runs make it a multiple of the data x fsdp mesh size.
      policy_loss: registered policy loss (`algorithms.POLICY_LOSSES`: vanilla | gspo | cispo).
      clip_low, clip_high, clip_c: PPO clip range (DAPO clip-higher) and dual-clip constant.
      tis_cap: truncated importance sampling cap C (0: off): the policy loss is weighted per token by
        `min(exp(old_logp - rollout_logp), C)`, the sampler-vs-trainer correction.
      entropy_coeff: weight of the entropy bonus (`loss -= entropy_coeff * entropy`).
      kl_coef, kl_kind, use_kl_loss: KL-to-reference loss (k3 = "low_var_kl"); off: no ref needed.
      agg_mode: loss aggregation (`algorithms.AGG_MODES`), shared by all terms.
      max_response_len: normaliser of "seq-mean-token-sum-norm"; None: R.
      temperature: rollout temperature; logits are divided by it.
      logprob_chunk: response positions per float32 logits block.
      shuffle: permute rows every epoch (from the state's rng) before splitting mini-batches.
      cliprange_value: value-loss clip range (critic updates only).
      max_tokens_per_micro_batch: pack sequences into rows of real tokens, this many tokens per
        micro-batch (`packing.py`; `micro_batch_size` is then unused); None: padded rows. Actor only.
      share_prompts: packed rows hold one copy of a prompt for all its responses (`packing.plan_packing`).
      fuse_old_logp: take the old log-probs from the update's own forward (stop-gradient) instead of
        the batch's `old_logp`; exact only with one epoch and one mini-batch (checked per call).
    """

    ppo_epochs: int = 1
    mini_batch_size: int | None = None
    micro_batch_size: int | None = None
    policy_loss: str = "vanilla"
    tis_cap: float = 0.0
    clip_low: float = 0.2
    clip_high: float = 0.2
    clip_c: float | None = None
    entropy_coeff: float = 0.0
    kl_coef: float = 0.001
    kl_kind: str = "low_var_kl"
    use_kl_loss: bool = False
    agg_mode: str = "token-mean"
    max_response_len: int | None = None
    temperature: float = 1.0
    logprob_chunk: int = 256
    shuffle: bool = False
    cliprange_value: float = 0.5
    max_tokens_per_micro_batch: int | None = None
    share_prompts: bool = False
    fuse_old_logp: bool = False

    def __post_init__(self):
        self.actor_loss_config()  # validates modes, estimator and clip constants
        for name in ("mini_batch_size", "micro_batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {value}")
        if self.ppo_epochs < 1 or self.logprob_chunk < 1:
            raise ValueError("ppo_epochs and logprob_chunk must be >= 1")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.tis_cap < 0:
            raise ValueError(f"tis_cap must be >= 0 (0 = off), got {self.tis_cap}")
        if self.max_tokens_per_micro_batch is not None and self.max_tokens_per_micro_batch < 1:
            raise ValueError(f"max_tokens_per_micro_batch must be >= 1 or None, got {self.max_tokens_per_micro_batch}")
        if self.max_tokens_per_micro_batch and self.shuffle:
            raise ValueError("packing plans mini-batches on the host: shuffle=True is not supported with it")
        if self.fuse_old_logp and self.ppo_epochs != 1:
            raise ValueError(f"fuse_old_logp needs ppo_epochs == 1 (got {self.ppo_epochs}): later epochs' "
                             "policy is no longer the rollout policy")

    def actor_loss_config(self) -> ActorLossConfig:
        return ActorLossConfig(
            policy_loss=self.policy_loss, clip_low=self.clip_low, clip_high=self.clip_high, clip_c=self.clip_c,
            entropy_coeff=self.entropy_coeff, kl_coef=self.kl_coef if self.use_kl_loss else 0.0,
            kl_kind=self.kl_kind, agg=self.agg_mode, max_len=self.max_response_len,
        )

    def mini_batches(self, batch_size: int) -> int:
        """Mini-batches (optimizer steps) per epoch for a batch of `batch_size` rows."""
        mini = self.mini_batch_size or batch_size
        if batch_size % mini:
            raise ValueError(f"batch {batch_size} must be a multiple of mini_batch_size {mini}")
        if self.fuse_old_logp and mini != batch_size:
            raise ValueError(f"fuse_old_logp needs one mini-batch per step: batch {batch_size}, mini_batch_size {mini}")
        return batch_size // mini

    def split_sizes(self, batch_size: int) -> tuple[int, int]:
        """(mini-batches per epoch, micro-batches per mini-batch) for a batch of `batch_size` rows."""
        self.mini_batches(batch_size)
        mini = self.mini_batch_size or batch_size
        micro = self.micro_batch_size or mini
        if batch_size % mini or mini % micro:
            raise ValueError(
                f"batch {batch_size} must be a multiple of mini_batch_size {mini}, "
                f"which must be a multiple of micro_batch_size {micro}"
            )
        return batch_size // mini, mini // micro


def make_actor_loss_fn(cfg: ModelConfig, ucfg: UpdateConfig, sharder=None) -> Callable:
    """`(params, micro_batch, denom) -> (loss, metrics)` for the policy, on one micro-batch.

    A packed micro-batch (`segment_ids` among its keys, see `packing.py`) runs the packed forward;
    both give log-probs in the padded `[b, R]` response layout, so the objective is the same code.
    """
    loss_cfg = ucfg.actor_loss_config()

    def loss_fn(params, mb, denom):
        kw = dict(temperature=ucfg.temperature, chunk=ucfg.logprob_chunk, with_entropy=True, sharder=sharder)
        if "segment_ids" in mb:
            logp, ent = packing.packed_logprobs(params, cfg, *(mb[k] for k in packing.PACKED_INPUTS), **kw)
        else:
            r = mb["response_mask"].shape[1]
            logp, ent = response_logprobs(params, cfg, mb["input_ids"], mb["attention_mask"], r, **kw)
        if ucfg.entropy_coeff == 0:
            ent = jax.lax.stop_gradient(ent)  # logged only: skip its backward pass
        # One epoch, one mini-batch: the rollout policy IS the current one, so its log-probs are this
        # forward's (no separate pass); the stop-gradient keeps the ratio's gradient that of exp(logp - c).
        old_logp = jax.lax.stop_gradient(logp) if ucfg.fuse_old_logp else mb["old_logp"]
        is_weights, tis_metrics = None, {}
        if ucfg.tis_cap > 0:  # Truncated IS: the trainer's old policy vs the sampler that drew the tokens.
            is_weights, tis_metrics = truncated_is_weights(old_logp, mb["rollout_logp"], mb["response_mask"], ucfg.tis_cap)
        loss, metrics = actor_loss(
            logp, old_logp, mb["advantages"], mb["response_mask"], loss_cfg,
            entropy=ent, ref_logp=mb.get("ref_logp"), is_weights=is_weights, denom=denom,
        )
        metrics = dict(metrics, **tis_metrics, loss=jax.lax.stop_gradient(loss))
        if "kl_loss" in metrics:
            metrics["kl"] = metrics.pop("kl_loss")
        return loss, metrics

    return loss_fn


def combine_micro(m: dict) -> dict:
    """Reduces metrics stacked over micro-batches (leaves `[n_micro]`) to one mini-batch's."""
    weights = m["num_tokens"] / jnp.maximum(jnp.sum(m["num_tokens"]), 1.0)
    out = {}
    for k, v in m.items():
        if k in SUM_KEYS:
            out[k] = jnp.sum(v)
        elif k in MIN_KEYS:
            out[k] = jnp.min(v)
        elif k in MAX_KEYS:
            out[k] = jnp.max(v)
        else:
            out[k] = jnp.sum(v * weights)
    return out


def combine_steps(m: dict) -> dict:
    """Reduces metrics stacked over optimizer steps (leaves `[S]`) to the update's."""
    out = {}
    for k, v in m.items():
        if k == "finite":
            out["finite"] = jnp.all(v).astype(jnp.float32)
            out["num_skipped"] = jnp.sum(~v).astype(jnp.float32)
        elif k in MIN_KEYS:
            out[k] = jnp.min(v)
        elif k in MAX_KEYS:
            out[k] = jnp.max(v)
        elif k != "num_tokens":
            out[k] = jnp.mean(v.astype(jnp.float32))
    out["num_steps"] = jnp.asarray(m["finite"].shape[0], jnp.float32)
    return out


def like_params(tree, param_sh):
    """`tree` (params-shaped) constrained to the params' shardings (FSDP: reduce-scatter, not all-reduce)."""
    return tree if param_sh is None else jax.lax.with_sharding_constraint(tree, param_sh)


def float32_zeros(params, param_sh):
    """The gradient accumulator: float32 whatever the param dtype (bf16 sums of many micro-batches lose bits)."""
    return like_params(jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params), param_sh)


def _accumulate_grads(loss_fn, params, micros: dict, denom, param_sh, n_micro: int):
    """Sum of gradients and stacked metrics over micro-batches (`micros` leaves `[n_micro, mb, ...]`)."""
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if n_micro == 1:  # nothing to accumulate: no zeros tree and no scan (a params-sized buffer less)
        (_, metrics), grads = grad_fn(params, jax.tree.map(lambda x: x[0], micros), denom)
        grads = like_params(jax.tree.map(lambda g: g.astype(jnp.float32), grads), param_sh)
        return grads, jax.tree.map(lambda m: m[None], metrics)
    zeros = float32_zeros(params, param_sh)

    def body(acc, mb):
        (_, metrics), grads = grad_fn(params, mb, denom)
        acc = like_params(jax.tree.map(lambda a, g: a + g.astype(jnp.float32), acc, grads), param_sh)
        return acc, metrics

    return jax.lax.scan(body, zeros, micros, length=n_micro)


def batch_metrics(batch: dict, ppo_epochs: int) -> dict:
    """Advantage statistics over valid response tokens and token counts of the whole batch."""
    m_bt = batch["response_mask"] > 0
    out = {
        "num_response_tokens": jnp.sum(m_bt).astype(jnp.float32),
        # Tokens through forward + backward (prompt included), for throughput.
        "num_tokens": ppo_epochs * jnp.sum(batch["attention_mask"] > 0).astype(jnp.float32),
    }
    if "advantages" in batch:
        adv = jnp.asarray(batch["advantages"], jnp.float32)
        adv_bt = jnp.broadcast_to(adv[:, None] if adv.ndim == 1 else adv, m_bt.shape)
        n = jnp.maximum(jnp.sum(m_bt), 1)
        mean = jnp.sum(jnp.where(m_bt, adv_bt, 0.0)) / n
        var = jnp.sum(jnp.where(m_bt, jnp.square(adv_bt - mean), 0.0)) / n
        any_valid = jnp.any(m_bt)
        out.update(
            adv_mean=mean,
            adv_std=jnp.sqrt(var),
            adv_min=jnp.where(any_valid, jnp.min(jnp.where(m_bt, adv_bt, jnp.inf)), 0.0),
            adv_max=jnp.where(any_valid, jnp.max(jnp.where(m_bt, adv_bt, -jnp.inf)), 0.0),
        )
    return out


def _optimizer_step(state: TrainState, grads, metrics: dict, tx, schedule):
    """One AdamW step from a mini-batch's summed gradients, skipped when the loss or gradient is not finite."""
    grad_norm = optax.tree.norm(grads)  # global L2 norm, before clipping
    finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)
    lr = schedule(state.step)
    state = apply_gradients(state, grads, tx, skip=~finite)
    return state, dict(metrics, grad_norm=grad_norm, lr=jnp.asarray(lr, jnp.float32), finite=finite)


def _make_step(loss_fn, ucfg: UpdateConfig, tx, schedule, n_mini: int, n_micro: int, sharder, param_sh):
    """The un-jitted `(state, batch) -> (state, metrics)` program."""

    def mini_step(state: TrainState, mb: dict):
        denom = aggregation_denominator(mb["response_mask"], ucfg.agg_mode, ucfg.max_response_len)
        micros = {k: constrain_rows(sharder, split_rows(v, n_micro), lead=1) for k, v in mb.items()}
        grads, stacked = _accumulate_grads(loss_fn, state.params, micros, denom, param_sh, n_micro)
        return _optimizer_step(state, grads, combine_micro(stacked), tx, schedule)

    def step(state: TrainState, batch: dict):
        rng, shuffle_rng = jax.random.split(state.rng)

        def epoch(state, key):
            rows = batch
            if ucfg.shuffle:
                perm = jax.random.permutation(key, batch["input_ids"].shape[0])
                rows = {k: constrain_rows(sharder, jnp.take(v, perm, axis=0)) for k, v in batch.items()}
            minis = {k: constrain_rows(sharder, split_rows(v, n_mini), lead=1) for k, v in rows.items()}
            return jax.lax.scan(mini_step, state, minis)

        keys = jax.random.split(shuffle_rng, ucfg.ppo_epochs)
        state, stacked = jax.lax.scan(epoch, state, keys)
        return state.replace(rng=rng), _epoch_metrics(stacked, batch, ucfg.ppo_epochs)

    return step


def _epoch_metrics(stacked: dict, batch: dict, ppo_epochs: int) -> dict:
    """Per-optimizer-step metrics `[epochs, minis]` combined, plus the batch's own metrics."""
    metrics = combine_steps(jax.tree.map(lambda x: x.reshape(-1), stacked))
    metrics.update(batch_metrics(batch, ppo_epochs))
    return metrics


def require_keys(batch: dict, keys) -> None:
    missing = [k for k in keys if k not in batch]
    if missing:
        raise KeyError(f"update batch lacks {missing}; needs {list(keys)}")


def _build_update(loss_fn, keys, ucfg: UpdateConfig, opt_cfg: OptimizerConfig, sharder, logical_axes):
    """Wraps the step in a per-batch-size cache of jitted programs with explicit shardings."""
    tx, schedule = make_optimizer(opt_cfg), make_schedule(opt_cfg)
    cache = {}

    def update(state: TrainState, batch: dict):
        require_keys(batch, keys)
        batch = {k: jnp.asarray(batch[k]) for k in keys}
        b = batch["input_ids"].shape[0]
        if b not in cache:
            n_mini, n_micro = ucfg.split_sizes(b)
            if sharder is None:
                step = _make_step(loss_fn, ucfg, tx, schedule, n_mini, n_micro, None, None)
                cache[b] = jax.jit(step, donate_argnums=0)
            else:
                state_sh = state_shardings(state.params, logical_axes, opt_cfg, sharder)
                step = _make_step(loss_fn, ucfg, tx, schedule, n_mini, n_micro, sharder, state_sh.params)
                rows = sharder.sharding((shd.ACT_BATCH,), (b,))  # prefix spec: batch dim only
                cache[b] = jax.jit(
                    step, in_shardings=(state_sh, rows), out_shardings=(state_sh, sharder.replicated()),
                    donate_argnums=0,
                )
        return cache[b](state, batch)

    return update


def make_update_fn(
    cfg: ModelConfig, update_cfg: UpdateConfig, opt_cfg: OptimizerConfig, sharder: shd.Sharder | None = None
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """The policy update: `update(state, batch) -> (new_state, metrics)`; `state` is donated.

    Args:
      cfg: model config (its `remat` sets the per-layer rematerialisation policy).
      update_cfg: epochs, batch splits, loss settings.
      opt_cfg: the optimizer the state was created with (`create_train_state`).
      sharder: mesh + rules; the state must be laid out by `param_logical_axes(cfg)` rules.

    Returns:
      `update`; batch keys as in the module docstring. Metrics (float32 scalars): `loss`,
      `pg_loss`, `entropy`, `kl` (with `use_kl_loss`), `clipfrac`, `clipfrac_lower`, `approx_kl`,
      `ratio_mean/min/max`, `grad_norm` (pre-clip), `lr`, `adv_mean/std/min/max`,
      `num_tokens` (forward+backward tokens, all epochs), `num_response_tokens`, `num_steps`,
      `num_skipped` and `finite` (1.0 iff every step had a finite loss and gradient); packed updates add
      `pack_fill` (real tokens / token slots computed). With `fuse_old_logp` the batch needs no `old_logp`.
    """
    keys = ACTOR_BATCH_KEYS + (("ref_logp",) if update_cfg.use_kl_loss else ()) + (
        ("rollout_logp",) if update_cfg.tis_cap > 0 else ())
    if update_cfg.fuse_old_logp:
        keys = tuple(k for k in keys if k != "old_logp")
    loss_fn = make_actor_loss_fn(cfg, update_cfg, sharder)
    if update_cfg.max_tokens_per_micro_batch:
        from rlvr_jax.training import packed_update, packing  # they build on this module's pieces

        return packed_update.build_packed_update(loss_fn, keys, update_cfg, opt_cfg, sharder,
                                                 transformer.param_logical_axes(cfg), packing.pass_costs(cfg))
    return _build_update(loss_fn, keys, update_cfg, opt_cfg, sharder, transformer.param_logical_axes(cfg))


def make_critic_update_fn(
    cfg: ModelConfig, update_cfg: UpdateConfig, opt_cfg: OptimizerConfig, sharder: shd.Sharder | None = None
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """The PPO critic update (clipped value loss), same epoch / mini / micro structure.

    The state holds critic params (`critic.critic_params_from_model`, created with
    `logical_axes=critic.critic_logical_axes(cfg)`). Batch keys: `critic.CRITIC_BATCH_KEYS`.
    Metrics: `vf_loss`, `vf_clipfrac`, `vpred_mean`, `grad_norm`, `lr`, counts and `finite`.
    """
    loss_fn = critic_lib.make_critic_loss_fn(
        cfg, update_cfg.cliprange_value, update_cfg.agg_mode, update_cfg.max_response_len, sharder
    )

    def with_total(params, mb, denom):
        loss, metrics = loss_fn(params, mb, denom)
        return loss, dict(metrics, loss=jax.lax.stop_gradient(loss))

    return _build_update(
        with_total, critic_lib.CRITIC_BATCH_KEYS, update_cfg, opt_cfg, sharder, critic_lib.critic_logical_axes(cfg)
    )
