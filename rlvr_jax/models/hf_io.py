"""Hugging Face checkpoints <-> params: `load_hf` and `save_hf`.

Loading is a table from HF tensor names to param paths. Safetensors files are memory-mapped and
each device shard of each param is read straight from the mapping (`make_array_from_callback`), so
the host never holds more than one shard beyond the mapped file, and on multi-host runs every
process reads only the shards it owns.
"""

from __future__ import annotations

import json
import pathlib

import jax
import ml_dtypes
import numpy as np

from rlvr_jax import sharding as shd
from rlvr_jax.models import transformer
from rlvr_jax.models.config import ModelConfig

_ST_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}


def hf_name_table(cfg: ModelConfig) -> dict[tuple[str, ...], tuple[str, bool]]:
    """param path -> (HF name pattern with `{i}` for the layer, transpose?)."""
    table = {("embed_tokens", "embedding"): ("model.embed_tokens.weight", False),
             ("norm", "scale"): ("model.norm.weight", False)}
    if not cfg.tie_word_embeddings:
        table[("lm_head", "kernel")] = ("lm_head.weight", True)
    pre = "model.layers.{i}."
    table[("layers", "input_layernorm", "scale")] = (pre + "input_layernorm.weight", False)
    table[("layers", "post_attention_layernorm", "scale")] = (pre + "post_attention_layernorm.weight", False)
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        table[("layers", "self_attn", name, "kernel")] = (pre + f"self_attn.{name}.weight", True)
        if cfg.attention_bias and name != "o_proj":
            table[("layers", "self_attn", name, "bias")] = (pre + f"self_attn.{name}.bias", False)
    for name in ("gate_proj", "up_proj", "down_proj"):
        table[("layers", "mlp", name, "kernel")] = (pre + f"mlp.{name}.weight", True)
    return table


class _SafetensorsDir:
    """Lazy, memory-mapped view of every tensor in a (possibly sharded) safetensors checkpoint."""

    def __init__(self, path: pathlib.Path):
        index = path / "model.safetensors.index.json"
        if index.is_file():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        elif (path / "model.safetensors").is_file():
            files = ["model.safetensors"]
        else:
            raise FileNotFoundError(f"no model.safetensors or model.safetensors.index.json in {path}")
        self.tensors: dict[str, np.ndarray] = {}
        for name in files:
            self.tensors.update(_mmap_safetensors(path / name))

    def get(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name not in self.tensors:
            raise KeyError(f"missing tensor {name!r} in checkpoint")
        arr = self.tensors[name]
        if tuple(arr.shape) != tuple(shape):
            raise ValueError(f"tensor {name!r} has shape {tuple(arr.shape)}, expected {tuple(shape)}")
        return arr


def _mmap_safetensors(file: pathlib.Path) -> dict[str, np.ndarray]:
    with open(file, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _ST_DTYPES:
            raise ValueError(f"{file}: tensor {name!r} has unsupported dtype {info['dtype']}")
        begin, end = info["data_offsets"]
        dtype = np.dtype(_ST_DTYPES[info["dtype"]])
        count = (end - begin) // dtype.itemsize
        flat = np.memmap(file, dtype=dtype, mode="r", offset=8 + n + begin, shape=(count,)) if count else \
            np.zeros((0,), dtype)
        out[name] = flat.reshape(info["shape"])
    return out


def _read_shard(ckpt, pattern, transpose, stacked, full_shape, index, dtype):
    """Reads the `index` slice of one (possibly layer-stacked) param from the checkpoint."""
    if not stacked:
        hf_shape = full_shape[::-1] if transpose else full_shape
        arr = ckpt.get(pattern, hf_shape)
        arr = arr.T if transpose else arr
        return np.asarray(arr[index], dtype=dtype)
    layer_idx, rest = index[0], index[1:]
    per_layer = full_shape[1:]
    hf_shape = per_layer[::-1] if transpose else per_layer
    layers = range(*layer_idx.indices(full_shape[0]))
    parts = []
    for i in layers:
        arr = ckpt.get(pattern.format(i=i), hf_shape)
        arr = arr.T if transpose else arr
        parts.append(np.asarray(arr[rest], dtype=dtype))
    return np.stack(parts)


def load_hf(path, *, dtype: str = "float32", mesh=None, sharder: shd.Sharder | None = None, **cfg_overrides):
    """Loads an HF Qwen2 / Llama checkpoint directory.

    Args:
      path: directory with `config.json` and `model.safetensors` (or a sharded index).
      dtype: parameter storage dtype ("float32", "bfloat16", ...). Compute dtype is `cfg.dtype`.
      mesh: optional `jax.sharding.Mesh` with axes (data, fsdp, tensor); params are placed with the
        default logical rules. Pass `sharder` instead to use custom rules.
      **cfg_overrides: ModelConfig fields to override (e.g. `dtype="bfloat16"` for compute).

    Returns:
      `(cfg, params)`.
    """
    path = pathlib.Path(path)
    cfg = ModelConfig.from_pretrained(path, param_dtype=dtype, **cfg_overrides)
    ckpt = _SafetensorsDir(path)
    table = hf_name_table(cfg)
    _check_names(cfg, ckpt, table)
    if sharder is None and mesh is not None:
        sharder = shd.Sharder(mesh)
    shapes = transformer.param_shapes(cfg)
    axes = transformer.param_logical_axes(cfg)
    np_dtype = np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.dtype(dtype)

    def load_one(keypath, shape):
        key = tuple(k.key for k in keypath)
        pattern, transpose = table[key]
        stacked = key[0] == "layers"
        if sharder is not None:
            sharding = sharder.sharding(_get(axes, key), shape)
        else:
            sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        return jax.make_array_from_callback(
            shape, sharding,
            lambda idx: _read_shard(ckpt, pattern, transpose, stacked, shape, _full_index(idx, shape), np_dtype),
        )

    params = jax.tree_util.tree_map_with_path(load_one, shapes, is_leaf=transformer._is_shape)
    return cfg, params


def _full_index(idx, shape):
    idx = tuple(idx) + (slice(None),) * (len(shape) - len(idx))
    return tuple(slice(*s.indices(n)) if isinstance(s, slice) else s for s, n in zip(idx, shape))


def _get(tree, key):
    for k in key:
        tree = tree[k]
    return tree


def _check_names(cfg: ModelConfig, ckpt: _SafetensorsDir, table) -> None:
    expected = set()
    for pattern, _ in table.values():
        expected.update(pattern.format(i=i) for i in range(cfg.num_layers)) if "{i}" in pattern \
            else expected.add(pattern)
    present = set(ckpt.tensors)
    missing = sorted(expected - present)
    # Tied models may still carry a copy of lm_head; rotary caches are derived, not learned.
    ignorable = {"lm_head.weight"} if cfg.tie_word_embeddings else set()
    unexpected = sorted(n for n in present - expected - ignorable if not n.endswith("rotary_emb.inv_freq"))
    if missing or unexpected:
        raise ValueError(
            "checkpoint does not match the config: "
            + (f"missing tensors {missing[:8]}{' ...' if len(missing) > 8 else ''} " if missing else "")
            + (f"unexpected tensors {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}" if unexpected else "")
        )


def save_hf(path, cfg: ModelConfig, params: dict, *, dtype: str | None = None, max_shard_bytes: int = 4 << 30) -> None:
    """Writes `config.json` and safetensors (sharded above `max_shard_bytes`) that transformers loads.

    Args:
      path: output directory (created).
      cfg: the model config. params: the params pytree (any sharding; gathered tensor by tensor).
      dtype: storage dtype of the written tensors; defaults to the params' own dtype.
    """
    from safetensors.numpy import save_file

    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    out_dtype = np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else (np.dtype(dtype) if dtype else None)
    tensors: dict[str, np.ndarray] = {}
    for key, (pattern, transpose) in hf_name_table(cfg).items():
        arr = np.asarray(jax.device_get(_get(params, key)))
        arr = arr.astype(out_dtype) if out_dtype is not None else arr
        if key[0] == "layers":
            for i in range(cfg.num_layers):
                tensors[pattern.format(i=i)] = np.ascontiguousarray(arr[i].T if transpose else arr[i])
        else:
            tensors[pattern] = np.ascontiguousarray(arr.T if transpose else arr)
    hf_cfg = cfg.to_hf_dict()
    hf_cfg["torch_dtype"] = str(next(iter(tensors.values())).dtype)
    (path / "config.json").write_text(json.dumps(hf_cfg, indent=2))
    shards, current, size = [], {}, 0
    for name, arr in tensors.items():
        if current and size + arr.nbytes > max_shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[name] = arr
        size += arr.nbytes
    shards.append(current)
    if len(shards) == 1:
        save_file(shards[0], str(path / "model.safetensors"), metadata={"format": "pt"})
        return
    weight_map = {}
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(path / fname), metadata={"format": "pt"})
        weight_map.update({n: fname for n in shard})
    total = sum(a.nbytes for a in tensors.values())
    (path / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
