"""The packed update: rows of real tokens planned on the host, one gradient and one optimizer program per step.

`update(state, batch)` plans the batch's sequences into packed rows (`packing.plan_packing`: per
mini-batch, micro-batches of a token budget), then runs a host loop, as verl's actor does:

  for epoch in range(ppo_epochs):
    for g in range(n_mini):                  strided mini-batches, the padded update's
      grads, metrics = gradients(params, step, batch, plan, g)     jitted: micro-batches summed
      if metrics["finite"]:                  one scalar read on the host
        state = optimizer_step(state, grads)                       jitted; the state donated

Two programs instead of one fused scan, for memory: the optimizer runs with nothing else alive but
the state and the gradients, and a non-finite step is skipped by not running it, where the fused
program skips inside itself with a once-or-never loop whose carry costs temporaries (SmolLM2-135M,
`memory_analysis`: the fused step's temporaries 1,185 MiB; here 262 MiB for the gradients program,
plus its 513 MiB of gradients, and none for the optimizer's with a float32 first moment, 257 MiB with
a bf16 one). Losses, denominators, metrics and the skip rule are the padded update's (`update.py`),
which the tests compare it with.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rlvr_jax import distributed
from rlvr_jax import sharding as shd
from rlvr_jax.algorithms import aggregation_denominator
from rlvr_jax.training import packing
from rlvr_jax.training import update as upd
from rlvr_jax.training.rows import split_rows
from rlvr_jax.training.state import TrainState, apply_gradients, make_optimizer, make_schedule, state_shardings

# Per-sequence batch arrays a packed micro-batch gathers into its slots (padded response layout).
_SLOT_KEYS = ("response_mask", "old_logp", "advantages", "ref_logp", "rollout_logp")


def _micro_inputs(batch: dict, plan_mb: dict) -> dict:
    """A packed micro-batch: its plan rows plus the batch's per-sequence arrays gathered to its `[rows * S]` slots."""
    flat = plan_mb["seq_index"].reshape(-1)
    mb = {k: plan_mb[k] for k in packing.PLAN_KEYS if k != "seq_index"}
    mb.update({k: jnp.take(batch[k], flat, axis=0) for k in _SLOT_KEYS if k in batch})
    valid = plan_mb["slot_valid"].reshape(-1, 1)
    mb["response_mask"] = jnp.where(valid, mb["response_mask"], 0)  # empty slots count nowhere
    return mb


def _accumulate(loss_fn, params, batch: dict, plan_m: dict, denom, param_sh):
    """Summed gradients and stacked metrics over packed micro-batches (`plan_m` leaves `[M, rows, ...]`);
    empty micro-batches are skipped."""
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def compute(mb):
        (_, metrics), grads = grad_fn(params, mb, denom)
        return jax.tree.map(lambda g: g.astype(jnp.float32), grads), metrics

    if plan_m["tokens"].shape[0] == 1:  # one micro-batch (never empty): no buffer, no scan, no cond
        grads, metrics = compute(_micro_inputs(batch, jax.tree.map(lambda x: x[0], plan_m)))
        return upd.like_params(grads, param_sh), jax.tree.map(lambda m: m[None], metrics)
    zeros = upd.float32_zeros(params, param_sh)

    def body(acc, plan_mb):
        mb = _micro_inputs(batch, plan_mb)
        grads, metrics = packing.skip_if_empty(mb["slot_valid"], compute, mb)
        used = jnp.any(mb["slot_valid"])  # a skipped micro-batch must not win a min / max
        metrics = {k: (jnp.where(used, v, jnp.inf) if k in upd.MIN_KEYS else
                       jnp.where(used, v, -jnp.inf) if k in upd.MAX_KEYS else v) for k, v in metrics.items()}
        return upd.like_params(jax.tree.map(jnp.add, acc, grads), param_sh), metrics

    return jax.lax.scan(body, zeros, plan_m)


def _gradients_program(loss_fn, ucfg, schedule, n_mini: int, sharder, param_sh):
    """`(params, step, batch, plan, g) -> (grads, metrics)` for mini-batch `g` (static: one program per
    mini-batch index; the paper's setting has one)."""

    def gradients(params, step, batch: dict, plan: dict, g: int):
        masks = split_rows(batch["response_mask"], n_mini)  # the padded update's strided mini-batches
        denom = aggregation_denominator(masks[g], ucfg.agg_mode, ucfg.max_response_len)
        plan_m = {k: packing.micro_major(v, sharder, group=g) for k, v in plan.items()}  # [M, rows, ...]
        grads, stacked = _accumulate(loss_fn, params, batch, plan_m, denom, param_sh)
        metrics = upd.combine_micro(stacked)
        grad_norm = optax.tree.norm(grads)  # before clipping
        finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)
        return grads, dict(metrics, grad_norm=grad_norm, lr=jnp.asarray(schedule(step), jnp.float32), finite=finite)

    return gradients


def _finish(steps: list[dict], batch: dict, rng, ppo_epochs: int):
    """The update's metrics from each optimizer step's, and the state's next rng (the padded update's)."""
    stacked = {k: jnp.stack([m[k] for m in steps]) for k in steps[0]}
    metrics = upd.combine_steps(stacked)
    metrics.update(upd.batch_metrics(batch, ppo_epochs))
    return metrics, jax.random.split(rng)[0]


def build_packed_update(loss_fn, keys, ucfg, opt_cfg, sharder, logical_axes, costs=None):
    """`update(state, batch)` that plans packed rows on the host, then steps through the programs above.

    `costs`: the model's `packing.pass_costs`, which the plan weighs row lengths by."""
    tx, schedule = make_optimizer(opt_cfg), make_schedule(opt_cfg)
    programs, ratchet = {}, packing.ShapeRatchet()

    def compile_programs(state: TrainState, b: int, rows: int, n_mini: int):
        # The optimizer step and the metrics' finish do not depend on the batch shape: built once, so a new
        # plan shape compiles only its gradient program.
        if "shared" not in programs:
            if sharder is None:
                programs["shared"] = (jax.jit(lambda s, g: apply_gradients(s, g, tx), donate_argnums=0),
                                      jax.jit(_finish, static_argnums=3))
            else:
                state_sh = state_shardings(state.params, logical_axes, opt_cfg, sharder)
                programs["shared"] = (
                    jax.jit(lambda s, g: apply_gradients(s, g, tx), in_shardings=(state_sh, state_sh.params),
                            out_shardings=state_sh, donate_argnums=0),
                    jax.jit(_finish, static_argnums=3, out_shardings=(sharder.replicated(),) * 2))
        step, finish = programs["shared"]
        if sharder is None:
            return jax.jit(_gradients_program(loss_fn, ucfg, schedule, n_mini, None, None), static_argnums=4), step, finish
        param_sh = state_shardings(state.params, logical_axes, opt_cfg, sharder).params
        batch_rows, plan_rows = (sharder.sharding((shd.ACT_BATCH,), (n,)) for n in (b, rows))  # prefix specs
        gradients = jax.jit(_gradients_program(loss_fn, ucfg, schedule, n_mini, sharder, param_sh),
                            in_shardings=(param_sh, sharder.replicated(), batch_rows, plan_rows),
                            out_shardings=(param_sh, sharder.replicated()), static_argnums=4)
        return gradients, step, finish

    def update(state: TrainState, batch: dict):
        upd.require_keys(batch, keys)
        ids, attn = distributed.to_host((batch["input_ids"], batch["attention_mask"]))
        b, r = batch["response_mask"].shape
        n_mini = ucfg.mini_batches(b)
        plan = packing.plan_packing(
            ids, attn, r, groups=[np.arange(g, b, n_mini) for g in range(n_mini)],
            max_tokens_per_micro_batch=ucfg.max_tokens_per_micro_batch, row_multiple=packing.batch_shards(sharder),
            share_prompts=ucfg.share_prompts, costs=costs, known_shapes=ratchet.shapes)
        plan = ratchet(plan)
        batch = {k: jnp.asarray(batch[k]) for k in keys}
        key = (b, plan.tokens.shape[0])
        if key not in programs:
            programs[key] = compile_programs(state, *key, n_mini)
        gradients, optimizer_step, finish = programs[key]
        plan_dev = packing.put_plan(plan, sharder)
        steps = []
        for _ in range(ucfg.ppo_epochs):
            for g in range(n_mini):
                grads, metrics = gradients(state.params, state.step, batch, plan_dev, g)
                # A step whose loss or gradient is not finite is not taken (state, moments and step count
                # unchanged) and reported through `finite`; the caller decides whether to stop.
                if bool(distributed.to_host(metrics["finite"])):
                    state = optimizer_step(state, grads)
                del grads
                steps.append(metrics)
        metrics, rng = finish(steps, batch, state.rng, ucfg.ppo_epochs)
        # Real tokens over the token slots the passes computed (1.0 = no padding at all).
        fill = plan.real_tokens / max(plan.computed_tokens, 1)
        return state.replace(rng=rng), dict(metrics, pack_fill=jnp.asarray(fill, jnp.float32))

    return update
