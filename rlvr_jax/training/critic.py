"""PPO critic: a separate transformer backbone with a scalar value head, and its step (`CriticRunner`).

Choice: the critic is its *own* copy of the backbone (initialised from the policy or reference
weights) plus a `[d, 1]` value head, trained by its own optimizer, as verl does. A value head on
the policy's backbone would be cheaper (one forward pass) but lets value-loss gradients move the
policy and ties both to one learning rate (verl uses 1e-6 for the actor, 1e-5 for the critic).

Critic params are the model params without `lm_head`, plus `value_head: {kernel [d, 1], bias [1]}`;
`transformer.decoder_stack` reads only the backbone keys, so the critic reuses the model code unchanged.

The value of response token `t` is read at the hidden state that predicts it (slot `P + t - 1`),
the state *before* the token is emitted (verl's `values[:, -R-1:-1]`).
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from rlvr_jax import distributed
from rlvr_jax import sharding as shd
from rlvr_jax.algorithms import gae_advantages, kl_in_reward, outcome_rewards_to_tokens, value_loss
from rlvr_jax.models import transformer
from rlvr_jax.models.config import ModelConfig
from rlvr_jax.training import logprobs as lp
from rlvr_jax.training.rows import map_micro_batches

VALUE_HEAD = "value_head"
CRITIC_BATCH_KEYS = ("input_ids", "attention_mask", "response_mask", "old_values", "returns")


def init_value_head(cfg: ModelConfig, rng: jax.Array, std: float = 0.0) -> dict:
    """A value head `{"kernel": [d, 1], "bias": [1]}` in `cfg.param_dtype`.

    Zero init by default: every value starts at 0, a neutral baseline for 0/1 verifiable rewards,
    and the first updates move the head before any noise reaches the backbone.
    """
    kernel = std * jax.random.normal(rng, (cfg.hidden_size, 1), jnp.float32)
    return {"kernel": kernel.astype(cfg.param_dtype), "bias": jnp.zeros((1,), cfg.param_dtype)}


def critic_params_from_model(params: dict, cfg: ModelConfig, rng: jax.Array, std: float = 0.0) -> dict:
    """Critic params: a copy of the model backbone (no `lm_head`) plus a fresh value head."""
    backbone = {k: jax.tree.map(jnp.copy, v) for k, v in params.items() if k != "lm_head"}
    return {**backbone, VALUE_HEAD: init_value_head(cfg, rng, std)}


def critic_logical_axes(cfg: ModelConfig) -> dict:
    """Logical axes of the critic params (the value head is split like an embedding row)."""
    axes = {k: v for k, v in transformer.param_logical_axes(cfg).items() if k != "lm_head"}
    return {**axes, VALUE_HEAD: {"kernel": (shd.EMBED, None), "bias": (None,)}}


def critic_abstract_params(cfg: ModelConfig) -> dict:
    """`jax.ShapeDtypeStruct`s of the critic params."""
    shapes = {k: v for k, v in transformer.param_shapes(cfg).items() if k != "lm_head"}
    shapes[VALUE_HEAD] = {"kernel": (cfg.hidden_size, 1), "bias": (1,)}
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s, cfg.param_dtype), shapes, is_leaf=lp._is_shape)


def response_values(
    critic_params, cfg: ModelConfig, input_ids_bt, attention_mask_bt, response_len: int, *, sharder=None
):
    """Differentiable values `[b, R]` (float32) of the response tokens of one micro-batch."""
    h_brd = lp.response_hidden(critic_params, cfg, input_ids_bt, attention_mask_bt, response_len, sharder=sharder)
    head = critic_params[VALUE_HEAD]
    values = jnp.einsum("brd,do->bro", h_brd, head["kernel"].astype(h_brd.dtype), preferred_element_type=jnp.float32)
    return values[..., 0] + head["bias"].astype(jnp.float32)[0]


@functools.lru_cache(maxsize=32)
def _values_program(cfg, batch_size, micro_batch_size, sharder):
    def run(critic_params, input_ids, attention_mask, response_mask):
        r = response_mask.shape[1]
        micro = lambda ids, attn: response_values(critic_params, cfg, ids, attn, r, sharder=sharder)  # noqa: E731
        values = map_micro_batches(micro, (input_ids, attention_mask), micro_batch_size, sharder)
        return jnp.where(response_mask > 0, values, 0.0)

    if sharder is None:
        return jax.jit(run)
    rows = sharder.sharding((shd.ACT_BATCH,), (batch_size,))
    param_sh = sharder.tree_shardings(critic_logical_axes(cfg), critic_abstract_params(cfg))
    return jax.jit(run, in_shardings=(param_sh, rows, rows, rows), out_shardings=rows)


def compute_values(
    critic_params, cfg: ModelConfig, batch: dict, *, micro_batch_size: int | None = None, sharder=None
) -> jax.Array:
    """Critic values of the response tokens (no gradient): the `old_values` of a PPO batch.

    Args:
      critic_params: see `critic_params_from_model`.
      cfg: the backbone's config.
      batch: `input_ids [B, P+R]`, `attention_mask [B, P+R]`, `response_mask [B, R]`.
      micro_batch_size: rows per forward pass; None: all at once.
      sharder: mesh + rules.

    Returns:
      `[B, R]` float32 values, zero where `response_mask` is 0. Feed them, with token rewards from
      `algorithms.outcome_rewards_to_tokens`, to `algorithms.gae_advantages` for advantages and
      returns.
    """
    b = batch["input_ids"].shape[0]
    fn = _values_program(cfg, b, micro_batch_size, sharder)
    return fn(critic_params, *(jnp.asarray(batch[k]) for k in lp.BATCH_KEYS))


def make_critic_loss_fn(cfg: ModelConfig, cliprange_value: float, agg: str, max_len, sharder=None):
    """`(critic_params, micro_batch, denom) -> (loss, metrics)`: clipped value loss, one micro-batch.

    `micro_batch` holds `CRITIC_BATCH_KEYS`; `denom` is the mini-batch's aggregation denominator.
    """

    def loss_fn(critic_params, mb, denom):
        r = mb["response_mask"].shape[1]
        values = response_values(critic_params, cfg, mb["input_ids"], mb["attention_mask"], r, sharder=sharder)
        loss, metrics = value_loss(
            values, mb["old_values"], mb["returns"], mb["response_mask"],
            cliprange_value=cliprange_value, agg=agg, max_len=max_len, denom=denom,
        )
        return loss, dict(metrics, vf_loss=jax.lax.stop_gradient(loss))

    return loss_fn


class CriticRunner:
    """PPO's critic: values of the rollout, GAE advantages and the clipped value-loss update.

    Args:
      state: critic `TrainState`. values_fn: `(critic_params, arrays) -> [N, R] values`.
      update_fn: critic `update(state, batch) -> (state, metrics)`.
      gamma, lam: GAE settings. warmup_steps: steps that train the critic only.
    """

    def __init__(self, state, values_fn, update_fn, *, gamma: float = 1.0, lam: float = 1.0, warmup_steps: int = 0,
                 kl_coef: float = 0.0):
        self.state, self.values_fn, self.update_fn = state, values_fn, update_fn
        self.gamma, self.lam, self.warmup_steps = gamma, lam, warmup_steps
        self.kl_coef = kl_coef  # k1 KL-in-reward coefficient (verl's use_kl_in_reward); 0 = off

    def update(self, step: int, rewards: np.ndarray, values, arrays: dict,
               put: Callable = lambda tree: tree, old_logp=None, ref_logp=None) -> tuple[np.ndarray, dict]:
        """GAE from outcome rewards and the critic's values; then one critic update. Returns advantages.

        Args:
          arrays: the rollout's host (numpy) arrays. put: places the critic batch on the mesh
            (`RLLoop._put`); GAE itself runs on host copies, identical on every process.
          old_logp, ref_logp: [N, R] rollout-policy and reference log-probs; with `kl_coef` > 0 the
            k1 KL penalty is charged on the token rewards (`algorithms.kl_in_reward`).
        """
        mask = arrays["response_mask"]
        values = distributed.to_host(values)
        token_rewards = outcome_rewards_to_tokens(rewards, mask)
        kl_metrics = {}
        if self.kl_coef > 0:
            if old_logp is None or ref_logp is None:
                raise ValueError("KL-in-reward needs the rollout and reference log-probs (build the reference model)")
            token_rewards, kl_metrics = kl_in_reward(token_rewards, distributed.to_host(old_logp),
                                                     distributed.to_host(ref_logp), mask, self.kl_coef)
        advantages, returns = gae_advantages(token_rewards, values, mask, gamma=self.gamma, lam=self.lam)
        advantages, returns = np.asarray(advantages), np.asarray(returns)
        batch = put({**arrays, "old_values": values, "returns": returns})
        self.state, metrics = self.update_fn(self.state, batch)
        metrics = {f"critic/{k}": v for k, v in distributed.to_host(metrics).items()}
        metrics.update({f"reward/{k}": float(v) for k, v in kl_metrics.items()})  # verl: reward_kl_penalty
        return advantages, metrics
