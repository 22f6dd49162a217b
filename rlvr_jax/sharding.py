"""Meshes and logical-axis sharding.

Models annotate params and activations with *logical* axis names (below); a rules table maps each
name to mesh axes `(data, fsdp, tensor)`. Changing parallelism edits the rules (they live in the
config), never the model code. A mesh axis that does not divide a dimension is dropped for that
dimension (the dimension is replicated), so tiny test models work on any mesh.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis names. Params: BATCH-free names; activations: the ACT_* names.
LAYERS, VOCAB, EMBED, HEADS, KV_HEADS, MLP, NORM = "layers", "vocab", "embed", "heads", "kv_heads", "mlp", "norm"
ACT_BATCH, ACT_LENGTH, ACT_EMBED = "act_batch", "act_length", "act_embed"
ACT_HEADS, ACT_KV_HEADS, ACT_MLP, ACT_VOCAB = "act_heads", "act_kv_heads", "act_mlp", "act_vocab"
CACHE_LENGTH = "cache_length"

Rules = tuple[tuple[str, Any], ...]

# FSDP over `fsdp` (params split along embed), tensor parallelism over `tensor` (heads / mlp / vocab),
# batch split over both `data` and `fsdp`. Sequence length is never split.
DEFAULT_RULES: Rules = (
    (LAYERS, None),
    (VOCAB, "tensor"),
    (EMBED, "fsdp"),
    (HEADS, "tensor"),
    (KV_HEADS, "tensor"),
    (MLP, "tensor"),
    (NORM, None),
    (ACT_BATCH, ("data", "fsdp")),
    (ACT_LENGTH, None),
    (ACT_EMBED, None),
    (ACT_HEADS, "tensor"),
    (ACT_KV_HEADS, "tensor"),
    (ACT_MLP, "tensor"),
    (ACT_VOCAB, "tensor"),
    (CACHE_LENGTH, None),
)


def make_mesh(shape: dict[str, int] | Sequence[int] = (1, -1, 1), devices=None) -> Mesh:
    """Builds a `(data, fsdp, tensor)` mesh over all (global) devices.

    Args:
      shape: sizes per axis, as a dict or a 3-sequence; one entry may be -1 (takes the rest).
      devices: devices to use; defaults to `jax.devices()` (all processes' devices on multi-host).
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = [shape.get(a, 1) for a in MESH_AXES] if isinstance(shape, dict) else list(shape)
    if len(sizes) != 3:
        raise ValueError(f"mesh shape needs 3 entries for {MESH_AXES}, got {shape}")
    if sizes.count(-1) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got {shape}")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"{len(devices)} devices cannot be split into mesh {shape}")
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, have {len(devices)}")
    try:
        from jax.experimental import mesh_utils

        grid = mesh_utils.create_device_mesh(sizes, devices=devices)
    except Exception:  # Topology-unaware fallback (e.g. fake CPU devices in odd counts).
        grid = np.asarray(devices).reshape(sizes)
    return Mesh(grid, MESH_AXES)


@dataclasses.dataclass(frozen=True)
class Sharder:
    """A mesh plus logical-axis rules. Hashable: usable as a static jit argument."""

    mesh: Mesh
    rules: Rules = DEFAULT_RULES

    def __post_init__(self):
        known = set(self.mesh.axis_names)
        for name, target in self.rules:
            for axis in _as_tuple(target):
                if axis not in known:
                    raise ValueError(f"sharding rule {name!r} -> {target!r}: mesh has no axis {axis!r}")

    def spec(self, logical: Sequence[str | None], shape: Sequence[int] | None = None) -> PartitionSpec:
        """PartitionSpec for an array with these logical axes (and, if given, this shape)."""
        table = dict(self.rules)
        used: set[str] = set()
        out = []
        for i, name in enumerate(logical):
            axes = tuple(a for a in _as_tuple(table.get(name) if name else None) if a not in used)
            if shape is not None:
                # Keep only a prefix of mesh axes whose product divides the dimension.
                kept = []
                for a in axes:
                    if shape[i] % (math.prod(self.mesh.shape[x] for x in kept) * self.mesh.shape[a]) == 0:
                        kept.append(a)
                axes = tuple(kept)
            axes = tuple(a for a in axes if self.mesh.shape[a] > 1)
            used.update(axes)
            out.append(None if not axes else axes[0] if len(axes) == 1 else axes)
        return PartitionSpec(*out)

    def sharding(self, logical, shape=None) -> NamedSharding:
        return NamedSharding(self.mesh, self.spec(logical, shape))

    def constrain(self, x: jax.Array, logical) -> jax.Array:
        """`with_sharding_constraint` by logical names (inside jit)."""
        return jax.lax.with_sharding_constraint(x, self.sharding(logical, x.shape))

    def tree_shardings(self, logical_tree, shape_tree):
        """Maps a pytree of logical-axis tuples and a matching pytree of shapes/arrays to shardings."""
        return jax.tree.map(
            lambda names, x: self.sharding(names, x.shape),
            logical_tree,
            shape_tree,
            is_leaf=lambda n: isinstance(n, tuple) and all(isinstance(a, (str, type(None))) for a in n),
        )

    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())


def constrain(sharder: Sharder | None, x: jax.Array, logical) -> jax.Array:
    """Applies a logical sharding constraint when a sharder is given; identity otherwise."""
    return x if sharder is None else sharder.constrain(x, logical)


def rules_from_config(rules) -> Rules:
    """Converts a config's rules (list of [name, axes] pairs, axes a str, list or None) to `Rules`."""
    out = []
    for item in rules:
        name, target = item
        out.append((str(name), tuple(target) if isinstance(target, (list, tuple)) else target))
    return tuple(out)


def _as_tuple(target) -> tuple[str, ...]:
    if target is None:
        return ()
    return (target,) if isinstance(target, str) else tuple(target)
