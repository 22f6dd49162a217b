"""load_hf / save_hf: round trips through transformers, sharded files, bf16, RoPE scaling, error paths."""

import json

import jax
import ml_dtypes
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from tests.hf_fixtures import left_padded_batch, make_hf_model, torch_logits

from rlvr_jax import models
from rlvr_jax.models import hf_io, transformer


def _rel_err(ours, ref, mask):
    m = mask.astype(bool)
    return np.max(np.abs(np.asarray(ours)[m] - ref[m])) / np.max(np.abs(ref[m]))


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("qwen2")
    return path, make_hf_model("qwen2", path)


@pytest.mark.parametrize("kind,tie", [("qwen2", False), ("llama3", True)])
def test_save_hf_round_trips_through_transformers(tmp_path, kind, tie):
    model = make_hf_model(kind, tmp_path / "src", tie=tie)
    cfg, params = models.load_hf(tmp_path / "src")
    models.save_hf(tmp_path / "out", cfg, params)
    hf_cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert hf_cfg["torch_dtype"] == "float32" and hf_cfg["tie_word_embeddings"] == tie
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32)
    ids, mask, pos = left_padded_batch(cfg.vocab_size, [10, 3], 10)
    np.testing.assert_array_equal(torch_logits(reloaded, ids, mask, pos), torch_logits(model, ids, mask, pos))
    cfg2, params2 = models.load_hf(tmp_path / "out")
    assert cfg2 == cfg
    for a, b in zip(*(map(np.asarray, jax.tree.leaves(p)) for p in (params, params2))):
        np.testing.assert_array_equal(a, b)


def test_sharded_safetensors_load_and_transformers(tmp_path, qwen_dir):
    src, model = qwen_dir
    cfg, params = models.load_hf(src)
    models.save_hf(tmp_path, cfg, params, max_shard_bytes=40_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 3 and not (tmp_path / "model.safetensors").exists()
    assert all(p.stat().st_size <= 40_000 + 64_000 for p in tmp_path.glob("model-*.safetensors"))
    assert set(index["weight_map"]) == set(hf_io.hf_tensor_shapes(cfg))
    ids, mask, pos = left_padded_batch(cfg.vocab_size, [8, 5, 1], 8)
    ref = torch_logits(model, ids, mask, pos)
    cfg2, params2 = models.load_hf(tmp_path)
    assert _rel_err(models.forward(params2, cfg2, ids, mask), ref, mask) < 1e-4
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    np.testing.assert_array_equal(torch_logits(reloaded, ids, mask, pos), ref)
    # Saving again unsharded into the same directory leaves no stale shards behind.
    models.save_hf(tmp_path, cfg, params)
    assert sorted(p.name for p in tmp_path.glob("model*")) == ["model.safetensors"]
    assert _rel_err(models.forward(*reversed(models.load_hf(tmp_path)), ids, mask), ref, mask) < 1e-4


def test_bf16_storage_and_compute(tmp_path, qwen_dir):
    src, model = qwen_dir
    cfg, params = models.load_hf(src, dtype="bfloat16", compute_dtype="bfloat16")
    assert (cfg.param_dtype, cfg.dtype) == ("bfloat16", "bfloat16")
    assert all(x.dtype == ml_dtypes.bfloat16 for x in jax.tree.leaves(params))
    ids, mask, pos = left_padded_batch(cfg.vocab_size, [12, 6], 12)
    ref = torch_logits(model, ids, mask, pos)
    logits = models.forward(params, cfg, ids, mask)
    assert logits.dtype == np.float32
    assert _rel_err(logits, ref, mask) < 3e-2
    # bf16 params export as BF16 safetensors that transformers reads.
    models.save_hf(tmp_path, cfg, params)
    header = hf_io.read_safetensors(tmp_path / "model.safetensors")
    assert {a.dtype for a in header.values()} == {np.dtype(ml_dtypes.bfloat16)}
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    assert _rel_err(torch_logits(reloaded, ids, mask, pos), ref, mask) < 3e-2
    # And f32 params can be exported as bf16 on request.
    cfg32, params32 = models.load_hf(src)
    models.save_hf(tmp_path / "down", cfg32, params32, dtype="bfloat16")
    assert json.loads((tmp_path / "down" / "config.json").read_text())["torch_dtype"] == "bfloat16"


def test_llama3_rope_scaling_is_applied(tmp_path):
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    model = make_hf_model("llama3", tmp_path)
    cfg, params = models.load_hf(tmp_path)
    assert cfg.rope_scaling is not None
    ref_inv_freq, _ = ROPE_INIT_FUNCTIONS["llama3"](model.config, "cpu")
    np.testing.assert_allclose(transformer.rope_inv_freq(cfg), ref_inv_freq.numpy(), rtol=1e-6)
    assert not np.allclose(transformer.rope_inv_freq(cfg), transformer.rope_inv_freq(cfg.replace(rope_scaling=None)))
    ids, mask, _ = left_padded_batch(cfg.vocab_size, [40], 40)
    with_scaling = np.asarray(models.forward(params, cfg, ids, mask))
    without = np.asarray(models.forward(params, cfg.replace(rope_scaling=None), ids, mask))
    assert np.max(np.abs(with_scaling - without)) > 1e-3 * np.max(np.abs(with_scaling))


# ------------------------------------------------------------------------------------------ errors


def _rewrite(path, edit):
    """Applies `edit(tensors) -> tensors` to `path/model.safetensors`."""
    tensors = edit(dict(load_file(path / "model.safetensors")))
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})


def _edit_config(path, **changes):
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(changes)
    (path / "config.json").write_text(json.dumps(cfg))


def test_error_missing_directory_and_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="model directory not found"):
        models.load_hf(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        models.load_hf(tmp_path)
    make_hf_model("qwen2", tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        models.load_hf(tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": "gone.safetensors"}}))
    with pytest.raises(FileNotFoundError, match="gone.safetensors"):
        models.load_hf(tmp_path)


@pytest.mark.parametrize("changes,match", [
    ({"model_type": "mistral"}, "unsupported model_type 'mistral'"),
    ({"attention_bias": True}, "attention_bias=true is not supported"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "unsupported rope type 'yarn'"),
    ({"hidden_act": "gelu"}, "unsupported hidden_act"),
])
def test_error_unsupported_config(tmp_path, changes, match):
    make_hf_model("llama3", tmp_path)
    _edit_config(tmp_path, **changes)
    with pytest.raises(ValueError, match=match):
        models.load_hf(tmp_path)


def test_error_missing_unexpected_misshaped_tensors(tmp_path):
    make_hf_model("qwen2", tmp_path)
    original = dict(load_file(tmp_path / "model.safetensors"))

    _rewrite(tmp_path, lambda t: {k: v for k, v in t.items() if k != "model.layers.1.mlp.up_proj.weight"})
    with pytest.raises(ValueError, match=r"missing tensors \(1\): model.layers.1.mlp.up_proj.weight"):
        models.load_hf(tmp_path)

    _rewrite(tmp_path, lambda t: {**original, "model.layers.2.mlp.up_proj.weight": original[
        "model.layers.1.mlp.up_proj.weight"]})
    with pytest.raises(ValueError, match=r"unexpected tensors \(1\): model.layers.2.mlp.up_proj.weight"):
        models.load_hf(tmp_path)

    _rewrite(tmp_path, lambda t: {**original, "model.layers.0.self_attn.k_proj.weight": np.zeros((16, 64), np.float32)})
    with pytest.raises(ValueError, match=r"mis-shaped tensors \(1\): model.layers.0.self_attn.k_proj.weight "
                                         r"\(16, 64\) \(expected \(32, 64\)\)"):
        models.load_hf(tmp_path)


def test_tied_checkpoint_with_lm_head_copy(tmp_path):
    make_hf_model("qwen2", tmp_path, tie=True)
    original = dict(load_file(tmp_path / "model.safetensors"))
    embed = original["model.embed_tokens.weight"]
    _rewrite(tmp_path, lambda t: {**original, "lm_head.weight": embed.copy()})
    models.load_hf(tmp_path)  # An identical copy is fine.
    _rewrite(tmp_path, lambda t: {**original, "lm_head.weight": embed + 1})
    with pytest.raises(ValueError, match="lm_head.weight differs from model.embed_tokens.weight"):
        models.load_hf(tmp_path)


def test_save_hf_rejects_params_not_matching_config(tmp_path, qwen_dir):
    cfg, params = models.load_hf(qwen_dir[0])
    with pytest.raises(ValueError, match="params have no lm_head/kernel"):
        models.save_hf(tmp_path, cfg, {k: v for k, v in params.items() if k != "lm_head"})
    with pytest.raises(ValueError, match="norm/scale has shape"):
        models.save_hf(tmp_path, cfg, {**params, "norm": {"scale": np.ones(3, np.float32)}})
