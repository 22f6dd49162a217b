"""Qwen3 dense against transformers' Qwen3ForCausalLM: logits, greedy generation, save_hf, refusals, presets."""

import json

import jax
import numpy as np
import pytest
import torch
import transformers

from tests.hf_fixtures import left_padded_batch, make_hf_model, torch_logits

from rlvr_jax import models, sampling
from rlvr_jax.models import presets


def _rel_err(ours, ref, mask):
    m = mask.astype(bool)
    return np.max(np.abs(np.asarray(ours)[m] - ref[m])) / np.max(np.abs(ref[m]))


@pytest.mark.parametrize("tie", [False, True])
def test_logits_match_transformers(tmp_path, tie):
    model = make_hf_model("qwen3", tmp_path, tie=tie)
    cfg, params = models.load_hf(tmp_path)
    # The fixture's head_dim (24) is not hidden / heads (16): the explicit value must be the one used.
    assert (cfg.model_type, cfg.head_dim, cfg.qk_norm, cfg.attention_bias, cfg.tie_word_embeddings) == \
        ("qwen3", 24, True, False, tie)
    assert cfg.hidden_size // cfg.num_heads != cfg.head_dim
    ids, mask, pos = left_padded_batch(cfg.vocab_size, [12, 7, 1], 12)
    err = _rel_err(models.forward(params, cfg, ids, mask), torch_logits(model, ids, mask, pos), mask)
    assert err < 2e-4, f"max relative error {err:.2e}"


def test_qk_norm_is_used(tmp_path):
    """Dropping the per-head q/k norm scales changes the logits (the parity above depends on them)."""
    make_hf_model("qwen3", tmp_path)
    cfg, params = models.load_hf(tmp_path)
    ids, mask, _ = left_padded_batch(cfg.vocab_size, [9], 9)
    unit = jax.tree.map(lambda x: x, params)
    unit["layers"]["self_attn"]["q_norm"]["scale"] = np.ones_like(params["layers"]["self_attn"]["q_norm"]["scale"])
    assert _rel_err(models.forward(unit, cfg, ids, mask), np.asarray(models.forward(params, cfg, ids, mask)),
                    mask) > 1e-3


def test_greedy_matches_transformers(tmp_path):
    torch_model = make_hf_model("qwen3", tmp_path, tie=True)
    cfg, params = models.load_hf(tmp_path)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(1, 97, size=k).tolist() for k in (5, 13, 1, 9)]
    p = max(map(len, prompts))
    ids, mask = np.zeros((len(prompts), p), np.int64), np.zeros((len(prompts), p), np.int64)
    for i, q in enumerate(prompts):
        ids[i, p - len(q):], mask[i, p - len(q):] = q, 1
    with torch.no_grad():
        ref = torch_model.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), do_sample=False,
                                   max_new_tokens=8, eos_token_id=None, pad_token_id=0)[:, p:].numpy()
    res = sampling.generate(params, cfg, prompts, max_new_tokens=8, greedy=True, progress=False)
    np.testing.assert_array_equal(np.array(res.tokens), ref)


@pytest.mark.parametrize("tie", [False, True])
def test_save_hf_round_trips_through_transformers(tmp_path, tie):
    model = make_hf_model("qwen3", tmp_path / "src", tie=tie)
    cfg, params = models.load_hf(tmp_path / "src")
    models.save_hf(tmp_path / "out", cfg, params, dtype="float32")
    hf_cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert hf_cfg["architectures"] == ["Qwen3ForCausalLM"] and hf_cfg["head_dim"] == 24
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32)
    assert type(reloaded) is transformers.Qwen3ForCausalLM
    ids, mask, pos = left_padded_batch(cfg.vocab_size, [10, 3], 10)
    np.testing.assert_array_equal(torch_logits(reloaded, ids, mask, pos), torch_logits(model, ids, mask, pos))
    cfg2, params2 = models.load_hf(tmp_path / "out")
    assert cfg2 == cfg
    for a, b in zip(*(map(np.asarray, jax.tree.leaves(p)) for p in (params, params2))):
        np.testing.assert_array_equal(a, b)


def _edit_config(path, **changes):
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(changes)
    (path / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("changes,match", [
    ({"model_type": "qwen3_moe"}, "unsupported model_type 'qwen3_moe': it has mixture-of-experts"),
    ({"attention_bias": True}, "qwen3 with attention_bias=true is not supported"),
    ({"use_sliding_window": True}, "sliding-window attention"),
    ({"layer_types": ["sliding_attention", "full_attention"]}, "only full_attention layers"),
])
def test_refuses_what_it_cannot_represent(tmp_path, changes, match):
    make_hf_model("qwen3", tmp_path)
    _edit_config(tmp_path, **changes)
    with pytest.raises(ValueError, match=match):
        models.load_hf(tmp_path)


def test_missing_qk_norm_tensors_are_named(tmp_path):
    """A Qwen2-shaped checkpoint labelled qwen3 fails the tensor check instead of loading unit norms."""
    make_hf_model("qwen2", tmp_path)
    _edit_config(tmp_path, model_type="qwen3", head_dim=16)
    with pytest.raises(ValueError, match=r"missing tensors .*q_norm"):
        models.load_hf(tmp_path)


@pytest.mark.parametrize("name,billions,layers,hidden,tie", [
    ("qwen3-0.6b", 0.596, 28, 1024, True), ("qwen3-1.7b", 1.721, 28, 2048, True),
    ("qwen3-4b", 4.022, 36, 2560, True), ("qwen3-8b", 8.191, 36, 4096, False),
])
def test_presets_have_published_sizes(name, billions, layers, hidden, tie):
    cfg = presets.preset_config(name)
    assert (cfg.num_layers, cfg.hidden_size, cfg.head_dim, cfg.tie_word_embeddings) == (layers, hidden, 128, tie)
    # Parameter counts of the released checkpoints (embeddings counted once when tied).
    assert abs(presets.num_params(cfg) / 1e9 - billions) < 1e-3
    # And they agree with transformers' own count for the same shapes.
    hf = transformers.Qwen3Config(**{k: v for k, v in presets.PRESETS[name].items() if k != "model_type"})
    with torch.device("meta"):
        ref = sum(p.numel() for p in transformers.Qwen3ForCausalLM(hf).parameters())
    assert presets.num_params(cfg) == ref


def test_recipe_is_the_papers_on_qwen3_and_plans_memory(monkeypatch, tmp_path):
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
    from configs import qwen15b_1shot, qwen3_1p7b_1shot
    from rlvr_jax.experiment import memory_plan

    monkeypatch.delenv("RLVR_JAX_QWEN3_1P7B", raising=False)
    c, paper = qwen3_1p7b_1shot.get_config(), qwen15b_1shot.get_config()
    assert c.name == "qwen3_1p7b_1shot" and c.model.path == ""
    for section in ("actor", "algorithm", "reward"):
        assert c[section].to_dict() == paper[section].to_dict(), section
    for key in ("n", "temperature", "top_p", "max_new_tokens"):
        assert c.rollout[key] == paper.rollout[key], key
    assert (c.trainer.batch_size, c.trainer.total_steps, c.data.example) == (128, 2000, "pi1")
    assert c.data.template == "chat_template"
    monkeypatch.setenv("RLVR_JAX_QWEN3_1P7B", str(tmp_path))
    assert qwen3_1p7b_1shot.get_config("runlocal").model.path == str(tmp_path)
    # No checkpoint on disk: the dry run's memory plan uses the Qwen3-1.7B preset.
    plan = memory_plan(c)
    assert plan["model"] == presets.preset_config("qwen3-1.7b", param_dtype="float32", dtype="bfloat16",
                                                  remat="full", attention_impl="xla")
    per_device = plan["bytes_per_device"]
    n_dev = plan["devices"]
    assert per_device["params (master)"] * n_dev >= 4 * presets.num_params(plan["model"])


@pytest.mark.slow  # a launch/ subprocess on the tiny model
def test_qwen3_trains_and_exports_like_qwen2(tmp_path):
    """launch/train.py on a random tiny Qwen3 (head_dim != hidden / heads), then export_hf -> transformers."""
    import os
    import pathlib
    import subprocess
    import sys

    repo = pathlib.Path(__file__).resolve().parents[1]
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2")
    cmd = [sys.executable, str(repo / "launch/train.py"), "--config=" + str(repo / "configs/tiny.py"),
           f"--workdir={tmp_path}", "--config.trainer.total_steps=2", "--config.trainer.save_every=0",
           "--config.trainer.progress=False", "--config.model.arch.model_type=qwen3",
           "--config.model.arch.head_dim=24"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(np.isfinite(r["actor/grad_norm"]) for r in rows)
    sys.path.insert(0, str(repo))
    from rlvr_jax.experiment import export_hf

    out = export_hf(tmp_path, tmp_path / "hf")
    model = transformers.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    assert type(model) is transformers.Qwen3ForCausalLM and model.config.head_dim == 24
    cfg, params = models.load_hf(out)
    ids, mask, pos = left_padded_batch(cfg.vocab_size, [6, 3], 6)
    err = _rel_err(models.forward(params, cfg, ids, mask), torch_logits(model, ids, mask, pos), mask)
    assert err < 2e-4, f"max relative error {err:.2e}"
