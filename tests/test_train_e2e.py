"""End-to-end: launch/train.py and `experiment.train` on the tiny config; config errors; recipe values.

Interruption and resume are in test_resume.py; config variants and the dry run in test_train_variants.py.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from configs import common, qwen15b_1shot, tiny  # noqa: E402
from rlvr_jax import experiment  # noqa: E402
from rlvr_jax.experiment import validation as config_check  # noqa: E402


def _rows(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_train_cli_writes_all_outputs(tmp_path):
    # No XLA_FLAGS: the launch path leaves XLA its one host device (which uses every core), and the
    # default (1, -1, 1) mesh is laid over it.
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    cmd = [sys.executable, str(REPO / "launch/train.py"), "--config=" + str(REPO / "configs/tiny.py"),
           f"--workdir={tmp_path}", "--config.trainer.total_steps=3", "--config.trainer.save_every=2",
           "--config.trainer.progress=False"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "step 3/3" in proc.stdout
    assert "mesh data=1 fsdp=1 tensor=1 over 1 cpu device(s), compute dtype float32" in proc.stdout
    rows = _rows(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3]
    for key in ("reward/mean", "actor/entropy", "actor/kl", "actor/pg_clipfrac", "response/length_mean",
                "perf/tokens_per_s", "actor/grad_norm", "response/reflection_frac"):
        assert key in rows[-1], key
    samples = [json.loads(x) for x in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert samples and {"prompt", "response", "reward", "step"} <= set(samples[0])
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == ["2", "3"]
    resolved = json.loads((tmp_path / "config.json").read_text())
    assert resolved["trainer"]["total_steps"] == 3
    _check_export(tmp_path)


def _check_export(workdir):
    """launch/export_hf.py writes a directory transformers loads, with the checkpoint's logits."""
    import numpy as np
    import torch
    import transformers

    from rlvr_jax import models

    out = experiment.export_hf(workdir, workdir / "hf")
    model = transformers.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    cfg, params = models.load_hf(out)
    ids = np.array([[257, 72, 105, 10, 258, 33]])
    with torch.no_grad():
        ref = model(input_ids=torch.tensor(ids)).logits.numpy()
    ours = np.asarray(models.forward(params, cfg, ids, np.ones_like(ids)))
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)
    tok = transformers.AutoTokenizer.from_pretrained(str(out))
    assert tok.decode(tok.encode("12.8")) == "12.8"


def _tiny(**overrides):
    c = tiny.get_config()
    c.trainer.progress = False
    c.trainer.async_checkpoint = False
    # Two of the session's eight fake CPU devices (tests/conftest.py): still a sharded run, while on eight
    # each step of this 2-layer model spent ~5 s in per-device dispatch and collectives (1.8 s on two).
    c.mesh.num_devices = 2
    for key, value in overrides.items():
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


def test_config_errors_name_the_key():
    c = tiny.get_config()
    c.actor.agg_mode = "mean"
    with pytest.raises(config_check.ConfigError, match="actor.agg_mode"):
        config_check.validate(c)
    c = tiny.get_config()
    c.actor.micro_batch_size = 3
    with pytest.raises(config_check.ConfigError, match="actor.micro_batch_size"):
        config_check.validate(c)
    with pytest.raises(ValueError, match="unknown config variant"):
        tiny.get_config("lr=3")


def test_mesh_num_devices_takes_the_first_devices_and_names_a_bad_count():
    import jax

    c = tiny.get_config()
    assert dict(experiment.build_sharder(c).mesh.shape)["fsdp"] == jax.device_count()  # 0: every device
    c.mesh.num_devices = 2
    mesh = experiment.build_sharder(c).mesh
    assert list(mesh.devices.flat) == jax.local_devices()[:2] and dict(mesh.shape)["fsdp"] == 2
    c.mesh.num_devices = jax.local_device_count() + 1
    with pytest.raises(ValueError, match=f"num_devices={c.mesh.num_devices}: this process has"):
        experiment.build_sharder(c)
    c.mesh.num_devices = -1
    with pytest.raises(config_check.ConfigError, match="mesh.num_devices"):
        config_check.validate(c)


@pytest.mark.parametrize("key, registry", [
    ("algorithm.name", "rlvr_jax.algorithms:ADVANTAGE_ESTIMATORS"),
    ("actor.kl_kind", "rlvr_jax.algorithms:KL_ESTIMATORS"),
    ("actor.agg_mode", "rlvr_jax.algorithms:AGG_MODES"),
    ("actor.schedule", "rlvr_jax.training.state:SCHEDULES"),
    ("data.template", "rlvr_jax.data.prompts:_TEMPLATES"),
])
def test_validation_takes_names_from_the_registries(key, registry):
    """Every registered name passes (e.g. verl's "kl" / "mse"), an unregistered one names the key."""
    import importlib

    module, attr = registry.split(":")
    names = list(getattr(importlib.import_module(module), attr))
    assert names
    section, leaf = key.split(".")
    for name in names:
        c = tiny.get_config()
        c[section][leaf] = name
        if name == "cosine":
            c.actor.warmup_steps = 1
        config_check.validate(c)
    c = tiny.get_config()
    c[section][leaf] = "not_registered"
    with pytest.raises(config_check.ConfigError, match=rf"config\.{key}: got 'not_registered'.*{names[0]}"):
        config_check.validate(c)


def test_train_runs_from_python_and_build_exposes_the_pieces(tmp_path):
    """`experiment.train(config, workdir)` from Python (no flags): 2 steps, then `build` resumes."""
    out = experiment.train(_tiny(**{"trainer.total_steps": 2, "trainer.save_every": 1}), tmp_path)
    assert [h["step"] for h in out["history"]] == [1, 2] and "reward/mean" in out["last"]
    assert [r["step"] for r in _rows(tmp_path)] == [1, 2]
    run = experiment.build(_tiny(**{"trainer.total_steps": 3}), tmp_path)
    try:
        assert run.start_step == 2 and int(run.state.step) == 2  # optimizer steps restored
        assert run.settings.loop.total_steps == 3 and run.critic is None and run.ref_params is not None
    finally:
        run.close()


def test_release_programs_after_validation(tmp_path, monkeypatch):
    """`eval.release_programs`: the trainer drops the sampler's programs after each validation.

    What `release_programs` does (every engine program compiled again afterwards, same samples) is
    tested in test_continuous_batching.py; here, that the trainer calls it when, and only when, asked.
    """
    from rlvr_jax.experiment import training_run

    calls, real = [], training_run.release_programs
    monkeypatch.setattr(training_run, "release_programs", lambda: (calls.append("release"), real()))
    kw = {"trainer.total_steps": 1, "trainer.eval_every": 1, "trainer.save_every": 0,
          "eval.benchmarks": ("synthetic:add2d:4",), "eval.max_new_tokens": 4}
    experiment.train(_tiny(**kw, **{"eval.release_programs": False}), tmp_path / "keep")
    assert calls == []
    out = experiment.train(_tiny(**kw, **{"eval.release_programs": True}), tmp_path / "release")
    assert [h["step"] for h in out["history"] if "eval/add2d_4/accuracy" in h] == [0, 1]
    assert calls == ["release", "release"]  # after the step-0 and the step-1 validation


def test_qwen15b_recipe_is_the_papers_and_needs_weights(tmp_path, monkeypatch):
    monkeypatch.delenv("RLVR_JAX_QWEN15B", raising=False)
    c = qwen15b_1shot.get_config()
    assert (c.trainer.batch_size, c.rollout.n, c.rollout.temperature, c.rollout.top_p) == (128, 8, 0.6, 1.0)
    assert (c.data.max_prompt_len, c.rollout.max_new_tokens) == (1024, 3072)
    assert (c.actor.lr, c.actor.schedule, c.actor.b1, c.actor.b2) == (1e-6, "constant", 0.9, 0.999)
    assert (c.actor.weight_decay, c.actor.grad_clip, c.actor.mini_batch_size) == (0.01, 1.0, 0)
    assert (c.actor.use_kl_loss, c.actor.kl_kind, c.actor.kl_coef) == (True, "low_var_kl", 0.001)
    assert (c.actor.entropy_coeff, c.actor.clip_low, c.actor.clip_high, c.actor.agg_mode) == (
        0.001, 0.2, 0.2, "token-mean")
    assert (c.trainer.total_steps, c.trainer.save_every, c.trainer.eval_every) == (2000, 20, 20)
    assert c.trainer.eval_before_train and list(c.eval.benchmarks) == ["math500"]
    assert c.data.example == "pi1" and c.data.system_prompt == common.SYSTEM_PROMPT
    assert c.algorithm.name == "grpo"
    with pytest.raises(config_check.ConfigError, match="model.path.*download"):
        config_check.validate(c)
    c.model.path = str(tmp_path / "nope")
    with pytest.raises(config_check.ConfigError, match="not found"):
        config_check.validate(c)
    ppo = qwen15b_1shot.get_config("algo=ppo")
    assert ppo.algorithm.name == "gae" and not ppo.actor.use_kl_loss
    ablation = qwen15b_1shot.get_config("reward=none,entropy=0,example=pi13")
    assert (ablation.reward.name, ablation.actor.entropy_coeff, ablation.data.example) == ("none", 0.0, "pi13")
