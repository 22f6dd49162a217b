"""Interruption and resume through `launch/train.py`: SIGTERM saves and exits; resuming is exact.

Both tests train on a shuffled 8-problem dataset with 2 problems per step, so a resumed run only
reproduces the uninterrupted one if it continues from the saved data position (the prompt
iterator's checkpointed state) as well as from the saved weights and optimizer moments.
"""

import signal
import subprocess
import time

import pytest

from tests import train_cli

# Metrics compared between runs. Rollouts and updates are deterministic on CPU, so a resumed run
# must reproduce these to float rounding.
COMPARED = ("reward/mean", "actor/loss", "actor/entropy", "actor/kl", "actor/grad_norm", "response/length_mean")


def _data_flags(tmp_path) -> list[str]:
    data = train_cli.write_problems(tmp_path / "problems.jsonl")
    return [f"--config.data.train_path={data}", "--config.data.shuffle=True", "--config.trainer.batch_size=2",
            "--config.rollout.max_new_tokens=8"]


def _assert_same_metrics(a_rows, b_rows):
    assert [r["step"] for r in a_rows] == [r["step"] for r in b_rows]
    for ra, rb in zip(a_rows, b_rows):
        for key in COMPARED:
            assert ra[key] == pytest.approx(rb[key], rel=1e-5, abs=1e-6), (ra["step"], key)


def test_stop_and_resume_reproduce_the_uninterrupted_run(tmp_path):
    flags = _data_flags(tmp_path) + ["--config.trainer.save_every=3"]
    # 6 steps cross an epoch boundary (4 steps per epoch) and resume mid-epoch (after step 3).
    train_cli.run(tmp_path / "straight", *flags, "--config.trainer.total_steps=6")
    train_cli.run(tmp_path / "resumed", *flags, "--config.trainer.total_steps=3")
    assert train_cli.checkpoint_steps(tmp_path / "resumed") == [3]
    proc = train_cli.run(tmp_path / "resumed", *flags, "--config.trainer.total_steps=6")
    assert "resumed from step 3" in proc.stdout + proc.stderr
    straight, resumed = train_cli.train_rows(tmp_path / "straight"), train_cli.train_rows(tmp_path / "resumed")
    assert [r["step"] for r in resumed] == [1, 2, 3, 4, 5, 6]
    _assert_same_metrics(straight, resumed)
    # The batches really differ from step to step (otherwise the data position would be invisible).
    assert len({round(r["actor/entropy"], 6) for r in straight}) == len(straight)


def _wait_for_rows(workdir, count: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + train_cli.TIMEOUT_S
    while len(train_cli.train_rows(workdir)) < count:
        if proc.poll() is not None:
            raise AssertionError(f"train.py exited {proc.returncode} before step {count}: {proc.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"no step {count} within {train_cli.TIMEOUT_S} s")
        time.sleep(0.05)


def test_sigterm_saves_the_current_step_and_the_same_command_resumes(tmp_path):
    total = 8
    # save_every=0: the only checkpoints are the SIGTERM one and the final one.
    flags = _data_flags(tmp_path) + ["--config.trainer.save_every=0", f"--config.trainer.total_steps={total}"]
    workdir = tmp_path / "run"
    cmd = train_cli.command(workdir, *flags)
    proc = subprocess.Popen(cmd, env=train_cli.env(), cwd=train_cli.REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _wait_for_rows(workdir, 2, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=train_cli.TIMEOUT_S)
    assert proc.returncode == 0, err[-4000:]  # Exited by itself (the default action would be -15).
    steps = [r["step"] for r in train_cli.train_rows(workdir)]
    stopped = steps[-1]
    # Promptly: it finished the step in flight (at most one after the 2 seen) instead of all 8.
    assert steps == list(range(1, stopped + 1)) and stopped <= 3, steps
    assert f"SIGTERM: saved step {stopped}" in out + err
    assert train_cli.checkpoint_steps(workdir) == [stopped]

    proc = train_cli.run(workdir, *flags)  # The same command again.
    assert f"resumed from step {stopped}" in proc.stdout + proc.stderr
    assert [r["step"] for r in train_cli.train_rows(workdir)] == list(range(1, total + 1))  # None lost or repeated.
    assert train_cli.checkpoint_steps(workdir) == [stopped, total]

    straight = tmp_path / "straight"
    train_cli.run(straight, *flags)
    _assert_same_metrics(train_cli.train_rows(straight), train_cli.train_rows(workdir))
