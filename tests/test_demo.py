"""The SmolLM2 CPU demo config end to end: it needs no argument, it learns, it evaluates and reports.

One run of the demo's own settings (configs/smollm2_1shot_cpu.py, its 8 steps), with a 4-problem
held-out set evaluated before training and at the end, serves the slow tests here: they assert
different things about the same run, so it is trained once per module.

Slow (eight real SmolLM2-135M steps: 8 responses of up to 64 tokens each, generated and trained on,
per step); it runs in CI (`.ci/run`), `-m "not slow"` leaves it out locally. The demo's train reward
goes from 0-1 correct samples in 8 at steps 1-2 to 5-7 at steps 7-8; rollouts are deterministic in
(seed, step), and evaluation draws from its own seeds, so the run is too.
"""

import json
import pathlib
import sys

import pytest

from tests import train_cli

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from configs import smollm2_1shot_cpu  # noqa: E402

STEPS = 8


def test_demo_config_needs_no_argument():
    from rlvr_jax.experiment import validate

    c = smollm2_1shot_cpu.get_config()
    validate(c)  # model.path unset -> the cached GGUF conversion.
    assert c.model.path == "" and c.model.source == "smollm2"


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, smollm2_dir):
    """(workdir, stdout) of the demo trained for `STEPS` steps, held-out eval at step 0 and the last."""
    workdir = tmp_path_factory.mktemp("demo")
    proc = train_cli.run(workdir, f"--config.model.path={smollm2_dir}", f"--config.trainer.total_steps={STEPS}",
                         f"--config.trainer.eval_every={STEPS}", "--config.trainer.eval_before_train=True",
                         "--config.eval.benchmarks=('synthetic:add2d:4',)", "--config.trainer.plot=True",
                         config="configs/smollm2_1shot_cpu.py", devices=1, optimized=True, timeout_s=3600)
    return workdir, proc.stdout


@pytest.mark.slow
def test_demo_raises_train_reward(demo_run):
    workdir, _ = demo_run
    rows = train_cli.train_rows(workdir)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    rewards = [r["reward/mean"] for r in rows]
    first, last = sum(rewards[:2]) / 2, sum(rewards[-2:]) / 2
    # 8 samples per step: +0.25 is 2 more correct answers per step in each of the last two steps; the
    # demo gains ~5 (BENCHMARKS.md).
    assert last >= first + 0.25, rewards
    # The logged samples agree: rewarded responses exist and each one states the answer, 85.
    samples = [json.loads(line) for line in (workdir / "samples.jsonl").read_text().splitlines()]
    rewarded = [s["response"] for s in samples if s["reward"] == 1.0]
    assert rewarded and all("85" in r for r in rewarded), rewarded


@pytest.mark.slow
def test_demo_evaluates_held_out_and_reports(demo_run):
    workdir, printed = demo_run
    rows = train_cli.metrics(workdir)
    evals = [r for r in rows if "eval/add2d_4/accuracy" in r]
    assert [r["step"] for r in evals] == [0, STEPS]  # step 0 included
    heldout = (workdir / "heldout" / "add2d_4.jsonl").read_text()
    assert "What is 47 + 38?" not in heldout  # the training example never leaks into the held-out set
    assert (workdir / "curves.png").stat().st_size > 1000
    assert "| add2d_4 | 0 |" in printed and "pts |" in printed  # the before / after table
    last = train_cli.train_rows(workdir)[-1]
    # The longest response hits the token budget exactly when some response was cut (clip ratio).
    budget = smollm2_1shot_cpu.get_config().rollout.max_new_tokens
    assert last["response/length_min"] >= 1
    assert (last["response/length_max"] == budget) == (last["response/clip_ratio"] > 0), last
