"""Builders shared by launch/train.py and launch/eval.py: ConfigDict -> library objects.

This is the only place (with the launch scripts) that reads a ConfigDict; everything it builds is
plain library objects taking explicit arguments or small frozen dataclasses.
"""

from __future__ import annotations

import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import ml_collections

from rlvr_jax import sharding as shd
from rlvr_jax.data.tokenizers import load_tokenizer
from rlvr_jax.models import ModelConfig, init_params, load_hf, param_logical_axes

REPO = pathlib.Path(__file__).resolve().parents[1]


def build_sharder(config) -> shd.Sharder:
    """The (data, fsdp, tensor) mesh over every device of every process, with the config's rules."""
    mesh = shd.make_mesh(tuple(config.mesh.shape))
    rules = shd.rules_from_config(config.mesh.rules) if config.mesh.rules else shd.DEFAULT_RULES
    return shd.Sharder(mesh, rules)


def model_dir(config) -> str | None:
    """The HF directory the model (and by default the tokenizer) comes from."""
    if config.model.source == "smollm2":
        from rlvr_jax.models.gguf_import import ensure_smollm2

        return str(config.model.path or ensure_smollm2())
    return config.model.path or None


def model_config(config) -> ModelConfig:
    """The `ModelConfig` `config.model` describes, without loading weights."""
    overrides = dict(param_dtype=config.model.param_dtype, dtype=config.model.dtype,
                     attention_impl=config.model.attention_impl, remat=config.model.remat)
    if config.model.source == "random":
        arch = config.model.arch.to_dict()
        arch.setdefault("max_position_embeddings", 4096)
        return ModelConfig.from_hf_dict(arch, **overrides)
    return ModelConfig.from_pretrained(model_dir(config), **overrides)


def build_model(config, sharder: shd.Sharder | None) -> tuple[ModelConfig, dict]:
    """Loads (or randomly initialises) the policy, sharded by the rules."""
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
    path = config.model.tokenizer_path or model_dir(config)
    if not path:
        raise ValueError("config.model.tokenizer_path: empty, and there is no model.path to take it from")
    return load_tokenizer(path)


def cast_params(params, dtype: str):
    """A copy of params in `dtype` (the frozen reference model is kept in bf16 on accelerators)."""
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, params)


def write_resolved_config(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(json.dumps(config.to_dict(), indent=2, default=str))


def resolve_benchmarks(names, out_dir: pathlib.Path, exclude=()) -> list[str]:
    """Benchmark names/paths; `synthetic:<kind>:<count>` specs are generated into jsonl files first."""
    from rlvr_jax.data.synthetic import SYNTHETIC_PREFIX, synthetic_benchmark

    out = []
    for name in names:
        if not str(name).startswith(SYNTHETIC_PREFIX):
            out.append(name)
            continue
        examples = synthetic_benchmark(str(name), exclude=tuple(exclude))
        path = pathlib.Path(out_dir) / (str(name)[len(SYNTHETIC_PREFIX):].replace(":", "_") + ".jsonl")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps({"problem": e.question, "answer": e.answer}) + "\n" for e in examples))
        out.append(str(path))
    return out
