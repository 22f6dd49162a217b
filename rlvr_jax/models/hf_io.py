"""Hugging Face checkpoints <-> params: `load_hf` and `save_hf`.

Loading is a table from HF tensor names to param paths. Safetensors files are memory-mapped and
each device shard of each param is read straight from the mapping (`make_array_from_callback`), so
the host never holds more than one shard beyond the mapped file, and on multi-host runs every
process reads only the shards it owns. The whole checkpoint (names and shapes) is validated against
`config.json` before anything is read.

Saving streams: tensors are fetched from the devices one at a time and appended to the open
safetensors file, so the host holds about one tensor however large the model.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import pathlib
from typing import Callable, Sequence

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
_ST_NAMES = {np.dtype(v): k for k, v in _ST_DTYPES.items()}
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


def np_dtype(name) -> np.dtype:
    """numpy dtype for a name such as "float32" or "bfloat16" (which plain numpy does not know)."""
    if isinstance(name, str) and name == "bfloat16":
        return np.dtype(ml_dtypes.bfloat16)
    try:
        return np.dtype(name)
    except TypeError as e:
        raise ValueError(f"unknown dtype {name!r}") from e


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
    if cfg.qk_norm:
        for name in ("q_norm", "k_norm"):
            table[("layers", "self_attn", name, "scale")] = (pre + f"self_attn.{name}.weight", False)
    for name in ("gate_proj", "up_proj", "down_proj"):
        table[("layers", "mlp", name, "kernel")] = (pre + f"mlp.{name}.weight", True)
    return table


def hf_tensor_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every HF tensor name of this config -> its HF (torch `[out, in]`) shape."""
    shapes = transformer.param_shapes(cfg)
    out = {}
    for key, (pattern, transpose) in hf_name_table(cfg).items():
        shape = _get(shapes, key)
        if key[0] == "layers":
            per_layer = shape[1:][::-1] if transpose else shape[1:]
            out.update({pattern.format(i=i): per_layer for i in range(cfg.num_layers)})
        else:
            out[pattern] = shape[::-1] if transpose else shape
    return out


# ----------------------------------------------------------------------------------------- reading


class SafetensorsCheckpoint:
    """Lazy, memory-mapped view of every tensor in a (possibly sharded) safetensors checkpoint."""

    def __init__(self, path: pathlib.Path):
        path = pathlib.Path(path)
        index = path / INDEX_FILE
        if index.is_file():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            absent = [f for f in files if not (path / f).is_file()]
            if absent:
                raise FileNotFoundError(f"{index} lists shard files that do not exist: {absent}")
        elif (path / SINGLE_FILE).is_file():
            files = [SINGLE_FILE]
        else:
            raise FileNotFoundError(f"no {SINGLE_FILE} or {INDEX_FILE} in {path}")
        self.path = path
        self.tensors: dict[str, np.ndarray] = {}
        for name in files:
            self.tensors.update(read_safetensors(path / name))


def read_safetensors(file: pathlib.Path) -> dict[str, np.ndarray]:
    """Memory-maps one safetensors file: name -> read-only array view (nothing is read yet)."""
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


def check_checkpoint(cfg: ModelConfig, ckpt: SafetensorsCheckpoint) -> None:
    """Raises ValueError naming every missing, unexpected and mis-shaped tensor."""
    expected = hf_tensor_shapes(cfg)
    present = ckpt.tensors
    missing = sorted(set(expected) - set(present), key=_natural)
    # Rotary caches are derived, not learned; a tied model's lm_head copy is checked below.
    ignorable = {"lm_head.weight"} if cfg.tie_word_embeddings else set()
    unexpected = sorted((n for n in set(present) - set(expected) - ignorable
                         if not n.endswith("rotary_emb.inv_freq")), key=_natural)
    misshaped = [f"{n} {tuple(present[n].shape)} (expected {s})" for n, s in sorted(expected.items())
                 if n in present and tuple(present[n].shape) != s]
    problems = []
    for what, names in (("missing tensors", missing), ("unexpected tensors", unexpected),
                        ("mis-shaped tensors", misshaped)):
        if names:
            problems.append(f"{what} ({len(names)}): {', '.join(names[:6])}{', ...' if len(names) > 6 else ''}")
    if problems:
        raise ValueError(
            f"checkpoint {ckpt.path} does not match its config.json ({cfg.model_type}, {cfg.num_layers} layers, "
            f"tie_word_embeddings={cfg.tie_word_embeddings}): " + "; ".join(problems))
    if cfg.tie_word_embeddings and "lm_head.weight" in present:
        _check_tied_copy(present["model.embed_tokens.weight"], present["lm_head.weight"])


def _check_tied_copy(embed: np.ndarray, head: np.ndarray, rows: int = 4096) -> None:
    """A tied checkpoint that also stores lm_head.weight must store the embedding again, not another matrix."""
    if head.shape != embed.shape:
        raise ValueError(f"tie_word_embeddings is true but lm_head.weight has shape {tuple(head.shape)}, "
                         f"model.embed_tokens.weight {tuple(embed.shape)}")
    for start in range(0, embed.shape[0], rows):  # Chunked: never reads more than `rows` rows at once.
        if not np.array_equal(embed[start:start + rows], head[start:start + rows]):
            raise ValueError("tie_word_embeddings is true but lm_head.weight differs from model.embed_tokens.weight; "
                             "set tie_word_embeddings=false in config.json to use the separate lm_head")


def _read_shard(ckpt, pattern, transpose, stacked, full_shape, index, dtype):
    """Reads the `index` slice of one (possibly layer-stacked) param into a fresh host array."""
    if not stacked:
        arr = ckpt.tensors[pattern]
        # np.array copies: the result never aliases the memory-mapped file.
        return np.array((arr.T if transpose else arr)[index], dtype=dtype)
    layers = range(*index[0].indices(full_shape[0]))
    out = None
    for j, i in enumerate(layers):
        arr = ckpt.tensors[pattern.format(i=i)]
        part = (arr.T if transpose else arr)[index[1:]]
        if out is None:
            out = np.empty((len(layers),) + part.shape, dtype)
        out[j] = part
    return out


def load_hf(path, *, dtype: str = "float32", mesh=None, sharder: shd.Sharder | None = None,
            compute_dtype: str | None = None, **cfg_overrides):
    """Loads an HF Qwen2 / Qwen3 / Llama checkpoint directory.

    Args:
      path: directory with `config.json` and `model.safetensors` (or a sharded index).
      dtype: parameter storage dtype ("float32", "bfloat16", ...).
      mesh: optional `jax.sharding.Mesh` with axes (data, fsdp, tensor); params are placed with the
        default logical rules. Pass `sharder` instead to use custom rules. Without either, params
        live on the first device.
      compute_dtype: matmul / activation dtype (`cfg.dtype`); defaults to float32.
      **cfg_overrides: other ModelConfig fields to override (e.g. `attention_impl="cudnn"`).

    Returns:
      `(cfg, params)`.

    Raises:
      FileNotFoundError: no such directory, no config.json, or no safetensors.
      ValueError: unsupported architecture, or tensors missing / unexpected / mis-shaped.
    """
    path = pathlib.Path(path)
    load_dtype = np_dtype(dtype)
    if compute_dtype is not None:
        cfg_overrides["dtype"] = compute_dtype
    cfg = ModelConfig.from_pretrained(path, param_dtype=dtype, **cfg_overrides)
    ckpt = SafetensorsCheckpoint(path)
    check_checkpoint(cfg, ckpt)
    if sharder is None and mesh is not None:
        sharder = shd.Sharder(mesh)
    table = hf_name_table(cfg)
    axes = transformer.param_logical_axes(cfg)

    def load_one(keypath, shape):
        key = tuple(k.key for k in keypath)
        pattern, transpose = table[key]
        if sharder is not None:
            sharding = sharder.sharding(_get(axes, key), shape)
        else:
            sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        read = functools.partial(_read_shard, ckpt, pattern, transpose, key[0] == "layers", shape, dtype=load_dtype)
        return jax.make_array_from_callback(shape, sharding, lambda idx: read(_full_index(idx, shape)))

    params = jax.tree_util.tree_map_with_path(load_one, transformer.param_shapes(cfg), is_leaf=transformer._is_shape)
    return cfg, params


# ----------------------------------------------------------------------------------------- writing


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One tensor of a safetensors file: its name, shape, dtype, and how to fetch it (called once)."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    fetch: Callable[[], np.ndarray]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def write_safetensors(file, specs: Sequence[TensorSpec], metadata: dict[str, str] | None = None) -> None:
    """Streams tensors into one safetensors file; only one fetched tensor is alive at a time."""
    header, offset = {}, 0
    for s in specs:
        if s.dtype not in _ST_NAMES:
            raise ValueError(f"tensor {s.name!r}: dtype {s.dtype} has no safetensors equivalent")
        header[s.name] = {"dtype": _ST_NAMES[s.dtype], "shape": list(s.shape),
                          "data_offsets": [offset, offset + s.nbytes]}
        offset += s.nbytes
    if metadata:
        header["__metadata__"] = metadata
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # Keeps the data 8-byte aligned, as the reference writer does.
    with open(file, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for s in specs:
            arr = np.ascontiguousarray(s.fetch(), dtype=s.dtype)
            if arr.shape != tuple(s.shape):
                raise ValueError(f"tensor {s.name!r}: fetched shape {arr.shape}, declared {tuple(s.shape)}")
            f.write(arr.reshape(-1).view(np.uint8).data)


def write_sharded(path: pathlib.Path, specs: Sequence[TensorSpec], max_shard_bytes: int) -> None:
    """Writes `model.safetensors`, or numbered shards plus `model.safetensors.index.json` above
    `max_shard_bytes`; first removes the safetensors files of any earlier save into `path`."""
    for old in list(path.glob("model*.safetensors")) + [path / INDEX_FILE]:
        # Unlink rather than overwrite: arrays still memory-mapped from the old files stay valid.
        old.unlink(missing_ok=True)
    shards, size = [[]], 0
    for s in specs:
        if shards[-1] and size + s.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(s)
        size += s.nbytes
    meta = {"format": "pt"}  # transformers refuses safetensors without it.
    if len(shards) == 1:
        write_safetensors(path / SINGLE_FILE, shards[0], meta)
        return
    weight_map = {}
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        write_safetensors(path / fname, shard, meta)
        weight_map.update({s.name: fname for s in shard})
    index = {"metadata": {"total_size": sum(s.nbytes for s in specs)}, "weight_map": weight_map}
    (path / INDEX_FILE).write_text(json.dumps(index, indent=2))


def _fetch(leaf, layer: int | None, transpose: bool) -> np.ndarray:
    """One tensor (one layer of a stacked param) on the host, in HF orientation."""
    x = leaf if layer is None else leaf[layer]
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        x = multihost_utils.process_allgather(x, tiled=True)
    arr = np.asarray(jax.device_get(x))
    return arr.T if transpose else arr


def save_hf(path, cfg: ModelConfig, params: dict, *, dtype: str | None = None, max_shard_bytes: int = 4 << 30) -> None:
    """Writes `config.json` and safetensors (sharded above `max_shard_bytes`) that transformers loads.

    Tensors are gathered one at a time (per layer for stacked params), so host memory stays about
    one tensor. On multi-host runs every process must call this (the gathers are collective);
    process 0 writes.

    Args:
      path: output directory (created).
      cfg: the model config.
      params: the params pytree (any sharding).
      dtype: storage dtype of the written tensors; defaults to the params' own dtype.
      max_shard_bytes: largest safetensors file before splitting into shards with an index.
    """
    path = pathlib.Path(path)
    out_dtype = np_dtype(dtype) if dtype else None
    want = transformer.param_shapes(cfg)
    specs = []
    for key, (pattern, transpose) in hf_name_table(cfg).items():
        try:
            leaf = _get(params, key)
        except (KeyError, TypeError) as e:
            raise ValueError(f"params have no {'/'.join(key)} (config {cfg.model_type}, "
                             f"tie_word_embeddings={cfg.tie_word_embeddings})") from e
        if tuple(leaf.shape) != _get(want, key):
            raise ValueError(f"param {'/'.join(key)} has shape {tuple(leaf.shape)}, config expects {_get(want, key)}")
        dt = out_dtype or np.dtype(leaf.dtype)
        shape = tuple(leaf.shape)
        if key[0] == "layers":
            per_layer = shape[1:][::-1] if transpose else shape[1:]
            specs += [TensorSpec(pattern.format(i=i), per_layer, dt, functools.partial(_fetch, leaf, i, transpose))
                      for i in range(cfg.num_layers)]
        else:
            specs.append(TensorSpec(pattern, shape[::-1] if transpose else shape, dt,
                                    functools.partial(_fetch, leaf, None, transpose)))
    if jax.process_index() != 0:
        for s in specs:  # Take part in the collective gathers; process 0 writes.
            s.fetch()
        return
    path.mkdir(parents=True, exist_ok=True)
    hf_cfg = cfg.to_hf_dict()
    hf_cfg["torch_dtype"] = str(specs[0].dtype)
    (path / "config.json").write_text(json.dumps(hf_cfg, indent=2))
    write_sharded(path, specs, max_shard_bytes)


# ----------------------------------------------------------------------------------------- helpers


def _full_index(idx, shape):
    idx = tuple(idx) + (slice(None),) * (len(shape) - len(idx))
    return tuple(slice(*s.indices(n)) if isinstance(s, slice) else s for s, n in zip(idx, shape))


def _get(tree, key):
    for k in key:
        tree = tree[k]
    return tree


def _natural(name: str):
    """Sort key that puts layer 2 before layer 10."""
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in name.split(".")]
