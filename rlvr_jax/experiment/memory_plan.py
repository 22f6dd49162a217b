"""`launch/train.py --dry_run`: the per-device memory plan of a config, computed without allocating.

Params, optimizer moments and the reference copy are laid out with the run's real sharding rules
(`jax.eval_shape` + `Sharder`), so the bytes per device are what the run would hold. KV cache,
activations and logits blocks are estimated from the config's batch and length settings.
"""

from __future__ import annotations

import json
import math

import jax
import numpy as np

from rlvr_jax import sharding as shd
from rlvr_jax.experiment.model import build_sharder, model_config, resolve_dtype
from rlvr_jax.experiment.validation import validate
from rlvr_jax.models import ModelConfig, param_logical_axes, param_shapes
from rlvr_jax.models.presets import num_params

GB = 1e9


def _per_device_bytes(sharder: shd.Sharder, cfg: ModelConfig, dtype: str) -> int:
    """Bytes one device holds of a params-shaped tree in `dtype`, under the sharding rules."""
    shapes = param_shapes(cfg)
    axes = param_logical_axes(cfg)
    item = np.dtype(jax.numpy.dtype(dtype)).itemsize
    total = 0
    for shape, names in zip(jax.tree.leaves(shapes, is_leaf=_is_shape), jax.tree.leaves(axes, is_leaf=_is_axes)):
        local = sharder.sharding(names, shape).shard_shape(shape)
        total += math.prod(local) * item
    return total


def _views_of_weights(sharder: shd.Sharder, cfg: ModelConfig, param_dtype: str) -> bool:
    """Whether the sampler decodes from views of the stacked weights instead of a copy (`engine.decode_params`)."""
    devices = sharder.mesh.devices
    return devices.size == 1 and devices.flat[0].platform == "cpu" and jax.numpy.dtype(cfg.dtype) == jax.numpy.dtype(
        param_dtype)


def memory_plan(config) -> dict:
    """Per-device bytes of each resident piece of an RL step, and the total (no weights needed)."""
    cfg = model_config(config, need_weights=False)
    sharder = build_sharder(config)
    n_dev = sharder.mesh.devices.size
    batch_shards = math.prod(sharder.mesh.shape[a] for a in ("data", "fsdp"))
    p32 = _per_device_bytes(sharder, cfg, config.model.param_dtype)
    plan = {
        "params (master)": p32,
        "adamw moments": (_per_device_bytes(sharder, cfg, config.actor.mu_dtype)  # first moment: actor.mu_dtype
                          + _per_device_bytes(sharder, cfg, "float32")),
        "gradients": _per_device_bytes(sharder, cfg, "float32"),
        "reference params": (_per_device_bytes(sharder, cfg, resolve_dtype(config.model.ref_dtype))
                             if config.actor.use_kl_loss else 0),
        # Zero on one CPU device without a cast: the decode's per-layer weights are views (engine.decode_params).
        "sampler weight copy (compute dtype)": (0 if _views_of_weights(sharder, cfg, config.model.param_dtype)
                                                else _per_device_bytes(sharder, cfg, cfg.dtype)),
    }
    seqs = config.trainer.batch_size * config.rollout.n
    sub = config.rollout.sub_batch_size or seqs
    length = config.data.max_prompt_len + config.rollout.max_new_tokens
    cache_item = np.dtype(jax.numpy.dtype(cfg.dtype)).itemsize
    plan["kv cache (one rollout sub-batch)"] = (
        2 * cfg.num_layers * math.ceil(sub / batch_shards) * length * cfg.num_kv_heads * cfg.head_dim * cache_item)
    # Rows x row length of one micro-batch on one device: padded rows of the full length, or packed rows
    # of the token budget (the plan's worst case: the longest possible sequence sets the shortest row
    # length, and the plan may choose rows up to twice as long: `packing.row_candidates`).
    if config.actor.packing:
        from rlvr_jax.training.packing import row_candidates, row_layout

        budget = config.actor.max_tokens_per_micro_batch
        shapes = [row_layout(length, budget, 1, row_len=c) for c in row_candidates(length, budget, upto=seqs * length)]
    else:
        shapes = [(length, math.ceil(config.actor.micro_batch_size / batch_shards))]
    # Matmul outputs and the residual stream are in `residual_dtype`, matmul inputs in `dtype`: the plan
    # counts every activation at the wider of the two.
    act_item = max(np.dtype(jax.numpy.dtype(cfg.dtype)).itemsize, np.dtype(jax.numpy.dtype(cfg.residual_dtype)).itemsize)

    def activations(length: int, micro: int) -> int:
        # With per-layer remat only each layer's input (the residual stream) is saved; one layer's internals
        # are live at a time.
        saved = cfg.num_layers * micro * length * cfg.hidden_size * act_item
        layer = micro * length * (4 * cfg.hidden_size + 3 * cfg.intermediate_size) * act_item
        if cfg.attention_impl == "xla":  # einsum attention materialises [heads, t, t] scores in float32
            layer += micro * cfg.num_heads * length * length * 4
        return saved + layer if cfg.remat != "none" else cfg.num_layers * layer

    plan["activations (one micro-batch, remat)"] = max(activations(*shape) for shape in shapes)
    micro = max(m for _, m in shapes)
    plan["logits block (float32, fwd+bwd)"] = 2 * micro * config.actor.logprob_chunk * cfg.vocab_size * 4
    # Rollout buffers and update buffers are never live together: the peak is the larger phase.
    resident = plan["params (master)"] + plan["adamw moments"] + plan["reference params"]
    rollout = plan["sampler weight copy (compute dtype)"] + plan["kv cache (one rollout sub-batch)"]
    update = plan["gradients"] + plan["activations (one micro-batch, remat)"] + plan["logits block (float32, fwd+bwd)"]
    phases = {"resident (params, moments, reference)": resident, "peak during rollout": resident + rollout,
              "peak during update": resident + update, "peak": resident + max(rollout, update)}
    return {"model": cfg, "devices": n_dev, "mesh": dict(sharder.mesh.shape), "bytes_per_device": plan,
            "phases": phases}


def print_memory_plan(config) -> dict:
    """Validates `config` (weights not needed) and prints its `memory_plan` as a table and JSON."""
    validate(config, need_weights=False)
    out = memory_plan(config)
    cfg = out["model"]
    print(f"model: {cfg.model_type} {num_params(cfg) / 1e9:.2f}B params, vocab {cfg.vocab_size}, "
          f"param dtype {cfg.param_dtype}, compute {cfg.dtype}, attention {cfg.attention_impl}, remat {cfg.remat}")
    print(f"mesh: {out['mesh']} over {out['devices']} device(s)")
    print(f"step: {config.trainer.batch_size} prompts x n={config.rollout.n}, prompt <= {config.data.max_prompt_len}, "
          f"response <= {config.rollout.max_new_tokens}, rollout sub-batch {config.rollout.sub_batch_size or 'all'}, "
          + (f"packed micro-batches of {config.actor.max_tokens_per_micro_batch} tokens per device"
             if config.actor.packing else f"micro-batch {config.actor.micro_batch_size}"))
    print(f"{'piece':<42}{'GB / device':>12}")
    for name, value in out["bytes_per_device"].items():
        print(f"{name:<42}{value / GB:>12.2f}")
    for name, value in out["phases"].items():
        print(f"{name:<42}{value / GB:>12.2f}")
    print(json.dumps({**out["bytes_per_device"], **out["phases"]}))
    return out


def _is_shape(x) -> bool:
    return isinstance(x, tuple) and all(isinstance(i, int) for i in x)


def _is_axes(x) -> bool:
    return isinstance(x, tuple) and all(isinstance(i, (str, type(None))) for i in x)
