"""Evaluating every checkpoint: trainer.keep=0 keeps all, launch/eval.py --steps sweeps them into one
table and curves, resumably; the scores follow each checkpoint's own params."""

import json
import os
import pathlib
import re
import subprocess
import sys
import types

import jax
import numpy as np
import pytest

from rlvr_jax.data.tokenizers import BYTE_TOKENIZER, load_tokenizer
from rlvr_jax.evaluation import sweep
from rlvr_jax.training import checkpoint

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
N_PROBLEMS = 6
STEPS = (2, 4, 5)


@pytest.mark.parametrize("keep,kept", [(0, [1, 2, 3, 4, 5]), (2, [4, 5])])
def test_keep_zero_keeps_every_checkpoint(tmp_path, keep, kept):
    saver = checkpoint.Checkpointer(tmp_path, save_every=1, keep=keep, async_save=False)
    for step in range(1, 6):
        saver.save(step, {"w": np.full(3, step, np.float32)}, {"step": step})
    saver.close()
    assert sorted(int(p.name) for p in tmp_path.iterdir() if p.name.isdigit()) == kept
    with pytest.raises(ValueError, match="keep must be >= 0"):
        checkpoint.Checkpointer(tmp_path / "x", save_every=1, keep=-1)


def test_parse_steps():
    assert sweep.parse_steps("all", [40, 20]) == [20, 40]
    assert sweep.parse_steps("40, 20,40", [20, 40, 60]) == [20, 40]
    with pytest.raises(ValueError, match=r"no checkpoint for step\(s\) \[30\]; the run has \[20, 40\]"):
        sweep.parse_steps("20,30", [20, 40])
    with pytest.raises(ValueError, match="comma-separated"):
        sweep.parse_steps("latest", [20])
    with pytest.raises(ValueError, match="no checkpoints"):
        sweep.parse_steps("all", [])


class ParamsDependentGenerate:
    """Answers problem p correctly iff p < the checkpoint's final-norm scale (set to its step)."""

    def __init__(self):
        self.tok = load_tokenizer(BYTE_TOKENIZER)
        self.stop = self.tok.convert_tokens_to_ids("<|im_end|>")
        self.calls = []

    def __call__(self, params, cfg, prompts, *, n, **kwargs):
        level = int(round(float(np.asarray(params["norm"]["scale"])[0])))
        self.calls.append(level)
        tokens = []
        for ids in prompts:
            p = int(re.search(r"Q(\d+):", self.tok.decode(ids)).group(1))
            answer = 7 * p if p < level else 7 * p + 1
            tokens += [self.tok.encode(f"\\boxed{{{answer}}}", add_special_tokens=False) + [self.stop]] * n
        return types.SimpleNamespace(tokens=tokens, finish_reason=["stop"] * len(tokens))


@pytest.fixture
def run_dir(tmp_path):
    """A training workdir: config.json and checkpoints at STEPS, the params of step s marked with s."""
    from configs import tiny
    from rlvr_jax import experiment
    from rlvr_jax import models
    from rlvr_jax.training import state

    config = tiny.get_config()
    config.trainer.progress = False
    config.mesh.num_devices = 2  # two of the session's eight fake CPU devices: sharded, without 8x the dispatch
    cfg = experiment.model_config(config)
    saver = checkpoint.Checkpointer(tmp_path / "checkpoints", save_every=1, keep=0, async_save=False)
    for step in STEPS:
        params = models.init_params(cfg, jax.random.key(step))
        params["norm"]["scale"] = params["norm"]["scale"] * 0 + step
        saver.save(step, state.create_train_state(params, state.OptimizerConfig()), {"step": step}, force=True)
    saver.close()
    (tmp_path / "config.json").write_text(json.dumps(config.to_dict()))  # what a training run writes
    problems = tmp_path / "toy.jsonl"
    problems.write_text("".join(json.dumps({"problem": f"Q{p}: what is {p} times 7?", "answer": str(7 * p)}) + "\n"
                                for p in range(N_PROBLEMS)))
    config.model.path = str(tmp_path)
    return config, problems


def test_sweep_scores_each_checkpoint_and_resumes(run_dir, tmp_path):
    from rlvr_jax import experiment

    config, problems = run_dir
    out = tmp_path / "sweep"
    fake = ParamsDependentGenerate()
    result = experiment.evaluate_checkpoints(config, "all", benchmarks=[str(problems)], out_dir=str(out), generate_fn=fake)
    assert result.steps == STEPS and result.evaluated == STEPS and sorted(set(fake.calls)) == list(STEPS)
    # Step s answers problems 0..s-1: accuracy min(s, 6) / 6, read from the right checkpoint each time.
    assert {s: result.scores[s]["toy"] for s in STEPS} == {s: min(s, N_PROBLEMS) / N_PROBLEMS for s in STEPS}
    assert result.best("toy") == result.best() == (5, 5 / 6) and result.metrics == {"toy": "acc"}
    table = (out / "sweep.md").read_text().splitlines()
    assert table[0] == "| step | toy (acc) |" and table[2:] == ["| 2 | 33.3 |", "| 4 | 66.7 |", "| 5 | **83.3** |"]
    assert json.loads((out / "sweep.json").read_text())["steps"][1] == {"step": 4, "toy": 4 / 6}
    assert (out / "curves" / "toy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for step in STEPS:  # every step also has the single-step outputs
        assert json.loads((out / f"step_{step}" / "summary.json").read_text())["model"]["step"] == step
    # Resume: nothing to do; then a lost step is the only one evaluated again.
    fake.calls.clear()
    again = experiment.evaluate_checkpoints(config, "all", benchmarks=[str(problems)], out_dir=str(out), generate_fn=fake)
    assert again.evaluated == () and fake.calls == [] and again.scores == result.scores
    (out / "step_4" / "summary.json").unlink()
    subset = experiment.evaluate_checkpoints(config, "4,5", benchmarks=[str(problems)], out_dir=str(out), generate_fn=fake)
    assert subset.evaluated == (4,) and set(fake.calls) == {4} and subset.steps == (4, 5)


@pytest.mark.slow  # a launch/ subprocess on the tiny model
def test_eval_cli_steps_all(run_dir, tmp_path):
    """The flag end to end (real sampler on the tiny model), with its progress bar."""
    config, problems = run_dir
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    cmd = [sys.executable, str(REPO / "launch/eval.py"), "--config=" + str(REPO / "configs/tiny.py"),
           f"--config.model.path={config.model.path}", f"--benchmarks={problems}", "--steps=all",
           "--config.eval.limit=2", "--config.eval.max_new_tokens=4", f"--out_dir={tmp_path / 'o'}"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "checkpoints: 100%" in proc.stderr and "best checkpoint: step" in proc.stdout
    steps = [r["step"] for r in json.loads((tmp_path / "o" / "sweep.json").read_text())["steps"]]
    assert steps == list(STEPS)
    bad = subprocess.run(cmd[:-1] + ["--steps=3"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=600)
    assert bad.returncode != 0 and "no checkpoint for step(s) [3]" in bad.stderr
