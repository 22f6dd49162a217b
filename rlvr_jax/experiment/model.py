"""The model a config names: its `ModelConfig`, params, tokenizer; or a training run's checkpoint.

`model_config` is the one place a `config.model` section becomes a `ModelConfig` (training,
evaluation, export and the dry-run memory plan all call it).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections

from rlvr_jax import sharding as shd
from rlvr_jax.data.tokenizers import load_tokenizer
from rlvr_jax.models import ModelConfig, init_params, load_hf, param_logical_axes, save_hf
from rlvr_jax.models.presets import preset_config
from rlvr_jax.training import checkpoint


def _smollm2_dir(config) -> str:
    from rlvr_jax.models.gguf_import import ensure_smollm2  # Converts the GGUF once (cached).

    return str(config.model.path or ensure_smollm2())


# config.model.source -> the HF directory its weights (and default tokenizer) come from; None for
# "random" (params initialised from config.model.arch).
MODEL_SOURCES: dict[str, Callable[[Any], str | None]] = {
    "hf": lambda config: config.model.path or None,
    "random": lambda config: None,
    "smollm2": _smollm2_dir,
}
# Recipe name prefix -> architecture preset: the dry-run memory plan of a recipe whose weights are
# not on this machine (longest prefix wins).
RECIPE_PRESETS = {"qwen15b": "qwen2.5-math-1.5b", "qwen7b": "qwen2.5-math-7b",
                  "r1_distill_qwen15b": "deepseek-r1-distill-qwen-1.5b", "llama32_3b": "llama-3.2-3b-instruct",
                  "smollm2": "smollm2-135m", "qwen3_1p7b": "qwen3-1.7b"}


# CPU feature flags (Linux /proc/cpuinfo) of bf16 instructions: AVX-512 BF16 and AMX (x86), BF16 (Arm).
_BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def cpu_has_bf16(cpuinfo: str | None = None) -> bool:
    """Whether the host CPU has bf16 arithmetic instructions (False where it cannot tell: not Linux)."""
    if cpuinfo is None:
        try:
            cpuinfo = pathlib.Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace")
        except OSError:
            return False
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features") and _BF16_CPU_FLAGS & set(value.split()):
            return True
    return False


def resolve_dtype(name: str, backend: str | None = None, cpuinfo: str | None = None) -> str:
    """A config dtype with "auto" resolved: bfloat16 on accelerators and on CPUs with bf16 instructions,
    float32 on other CPUs.

    Without bf16 instructions XLA's CPU backend converts bf16 operands to float32 for every matmul: a
    bf16 decode then runs slower than a float32 one and holds a float32 copy of the weights as
    temporaries besides the bf16 one (BENCHMARKS.md), and the update gains nothing.
    """
    if name != "auto":
        return name
    if (backend or jax.default_backend()) != "cpu":
        return "bfloat16"
    return "bfloat16" if cpu_has_bf16(cpuinfo) else "float32"


def model_dir(config) -> str | None:
    """The HF directory the model (and by default the tokenizer) comes from; None for "random"."""
    return MODEL_SOURCES[config.model.source](config)


def model_config(config, *, need_weights: bool = True) -> ModelConfig:
    """The `ModelConfig` `config.model` describes, without loading weights.

    Args:
      config: the run config.
      need_weights: False (dry runs) falls back to the recipe's architecture preset when no
        checkpoint is on disk, and never converts the SmolLM2 GGUF.
    """
    overrides = dict(param_dtype=config.model.param_dtype, dtype=resolve_dtype(config.model.dtype),
                     residual_dtype=config.model.residual_dtype, attention_impl=config.model.attention_impl,
                     remat=config.model.remat)
    if config.model.source == "random":
        arch = config.model.arch.to_dict()
        arch.setdefault("max_position_embeddings", 4096)
        return ModelConfig.from_hf_dict(arch, **overrides)
    if need_weights:
        return ModelConfig.from_pretrained(model_dir(config), **overrides)
    if config.model.path and (pathlib.Path(config.model.path) / "config.json").is_file():
        return ModelConfig.from_pretrained(config.model.path, **overrides)
    for prefix, preset in sorted(RECIPE_PRESETS.items(), key=lambda kv: -len(kv[0])):
        if config.name.startswith(prefix):
            return preset_config(preset, **overrides)
    raise ValueError(f"config.model.path: no checkpoint there and no architecture preset for config "
                     f"{config.name!r} (recipe prefixes: {sorted(RECIPE_PRESETS)})")


def build_sharder(config) -> shd.Sharder:
    """The (data, fsdp, tensor) mesh over every device of every process (or `mesh.num_devices` of this one)."""
    n = config.mesh.num_devices
    devices = None
    if n:
        if jax.process_count() > 1:
            raise ValueError(f"config.mesh.num_devices={n}: a multi-process run spans every device (set 0)")
        if n > jax.local_device_count():
            raise ValueError(f"config.mesh.num_devices={n}: this process has {jax.local_device_count()} devices")
        devices = jax.local_devices()[:n]
    mesh = shd.make_mesh(tuple(config.mesh.shape), devices=devices)
    rules = shd.rules_from_config(config.mesh.rules) if config.mesh.rules else shd.DEFAULT_RULES
    return shd.Sharder(mesh, rules)


def build_model(config, sharder: shd.Sharder | None) -> tuple[ModelConfig, dict]:
    """Loads (or randomly initialises, seeded by `config.seed`) the policy, sharded by the rules."""
    cfg = model_config(config)
    if config.model.source == "random":
        init = jax.jit(functools.partial(init_params, cfg))
        if sharder is not None:
            abstract = jax.eval_shape(init, jax.random.PRNGKey(0))
            shardings = sharder.tree_shardings(param_logical_axes(cfg), abstract)
            init = jax.jit(functools.partial(init_params, cfg), out_shardings=shardings)
        return cfg, init(jax.random.PRNGKey(config.seed))
    return load_hf(model_dir(config), dtype=cfg.param_dtype, sharder=sharder, compute_dtype=cfg.dtype,
                   attention_impl=cfg.attention_impl, remat=cfg.remat)


def build_tokenizer(config):
    """`config.model.tokenizer_path`, else the model directory's tokenizer."""
    path = config.model.tokenizer_path or model_dir(config)
    if not path:
        raise ValueError("config.model.tokenizer_path: empty, and there is no model.path to take it from")
    return load_tokenizer(path)


def cast_params(params, dtype: str):
    """A copy of params in `dtype` (the frozen reference model is kept in bf16 on accelerators)."""
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, params)


@dataclasses.dataclass(frozen=True)
class Policy:
    """What evaluation needs of a model: its config, params, tokenizer and where it came from."""

    cfg: ModelConfig
    params: Any
    tokenizer: Any
    source: dict


def is_checkpoint_workdir(path: str | pathlib.Path) -> bool:
    """A training workdir: it holds the trainer's Orbax `checkpoints/` folder."""
    return bool(path) and (pathlib.Path(path) / "checkpoints").is_dir()


def load_policy(config, sharder: shd.Sharder, step: int | None = None) -> Policy:
    """The model `config.model` describes: a training workdir's checkpoint, HF weights, or random.

    Args:
      config: the run config; `model.path` may be a training workdir (checkpoints/ + config.json),
        whose own config then names the architecture, whatever `model.source` says.
      sharder: mesh + rules the params are placed with.
      step: checkpoint step of a training workdir (None: the latest).
    """
    if not is_checkpoint_workdir(config.model.path):
        cfg, params = build_model(config, sharder)
        return Policy(cfg, params, build_tokenizer(config),
                      {"source": config.model.source, "path": str(model_dir(config) or "")})
    workdir = pathlib.Path(config.model.path)
    run = _trained_model_config(config, workdir)
    cfg = model_config(run)
    abstract = jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))
    shardings = sharder.tree_shardings(param_logical_axes(cfg), abstract)
    params, step = checkpoint.restore_params(workdir / "checkpoints", abstract, shardings, step)
    return Policy(cfg, params, build_tokenizer(run),
                  {"source": "checkpoint", "path": str(workdir), "step": step,
                   "base": str(model_dir(run) or run.model.source)})


def _trained_model_config(config, workdir: pathlib.Path):
    """This config with the model *identity* (source, path, arch, tokenizer) of the trained run.

    Dtypes and the attention implementation stay this config's; a tokenizer_path set here wins.
    """
    run_file = workdir / "config.json"
    if not run_file.is_file():
        raise FileNotFoundError(f"{workdir} has checkpoints/ but no config.json (the training "
                                "run's resolved config, which names the architecture)")
    run_model = json.loads(run_file.read_text())["model"]
    merged = ml_collections.ConfigDict(config.to_dict())
    for key in ("source", "path", "arch"):
        merged.model[key] = run_model[key]
    merged.model.tokenizer_path = config.model.tokenizer_path or run_model["tokenizer_path"]
    return merged


def export_hf(workdir, out, *, step: int | None = None, dtype: str | None = None) -> pathlib.Path:
    """Writes a training run's policy (latest or `step`) as an HF directory with its tokenizer.

    transformers' `AutoModelForCausalLM.from_pretrained(out)` and vLLM load the result.

    Args:
      workdir: the training run directory (config.json + checkpoints/).
      out: the HF directory to write.
      step: checkpoint step (None: the latest). dtype: storage dtype (None: the params').
    """
    workdir = pathlib.Path(workdir)
    run_file = workdir / "config.json"
    if not run_file.is_file():
        raise FileNotFoundError(f"{workdir}: no config.json (not a training run directory)")
    config = ml_collections.ConfigDict(json.loads(run_file.read_text()))
    config.model.path = str(workdir)
    policy = load_policy(config, build_sharder(config), step)
    out = pathlib.Path(out)
    save_hf(out, policy.cfg, policy.params, dtype=dtype)
    policy.tokenizer.save_pretrained(str(out))
    return out
