"""Training learns: the SmolLM2 CPU demo, shortened to 8 steps, raises the reward on its one example.

Slow (several real SmolLM2-135M steps: 16 responses of up to 64 tokens each, generated and trained
on, per step); it runs in CI (`.ci/run`), `-m "not slow"` leaves it out locally. The settings are the
demo's own (configs/smollm2_1shot_cpu.py), whose train reward goes from 1-2 correct samples in 16 at
step 1 to most of them by step 8; rollouts are deterministic in (seed, step), so the run is too.
"""

import json

import pytest

from tests import train_cli

STEPS = 8


@pytest.mark.slow
def test_smollm2_demo_raises_train_reward(tmp_path, smollm2_dir):
    train_cli.run(tmp_path, f"--config.model.path={smollm2_dir}", f"--config.trainer.total_steps={STEPS}",
                  "--config.trainer.eval_every=0", "--config.trainer.eval_before_train=False",
                  config="configs/smollm2_1shot_cpu.py", devices=1, timeout_s=3600)
    rows = train_cli.train_rows(tmp_path)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    rewards = [r["reward/mean"] for r in rows]
    first, last = sum(rewards[:2]) / 2, sum(rewards[-2:]) / 2
    # 16 samples per step: +0.25 is 4 more correct answers per step, far beyond sampling noise.
    assert last >= first + 0.25, rewards
    # The logged samples agree: rewarded responses exist and each one states the answer, 85.
    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    rewarded = [s["response"] for s in samples if s["reward"] == 1.0]
    assert rewarded and all("85" in r for r in rewarded), rewarded
