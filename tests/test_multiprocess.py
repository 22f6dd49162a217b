"""Multi-process runs: 2 CPU processes (gloo collectives) x 2 devices == 1 process x 4 devices.

Each test starts real JAX processes with `jax.distributed.initialize` on localhost. When this
jaxlib cannot run cross-process CPU collectives, a small probe (initialise + one all-gather)
fails and the tests fail with its error (never a silent skip).

This file is also the worker script: `python tests/test_multiprocess.py <mode> <coordinator> <id> <out>`.
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
TIMEOUT_S = 240
PROBE_TIMEOUT_S = 240  # Two JAX start-ups and one all-gather: seconds when idle, bounded for a hang.
# Metrics that must agree between the two layouts (rel 1e-5: cross-process reductions may add in a
# different order than in-process ones).
COMPARED = ("reward/mean", "actor/loss", "actor/entropy", "actor/grad_norm", "actor/kl", "response/length_mean")
TRAIN_FLAGS = ("--config.trainer.batch_size=4", "--config.rollout.n=2", "--config.actor.micro_batch_size=4",
               "--config.mesh.shape=(1,4,1)", "--config.trainer.progress=False", "--config.trainer.plot=False",
               "--config.trainer.save_every=2")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env(devices: int) -> dict:
    # Replaces conftest's 8-device XLA_FLAGS: each child gets exactly `devices` CPU devices.
    return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
                PYTHONPATH=str(REPO))


def _run_all(cmds_envs, timeout=TIMEOUT_S) -> list[subprocess.CompletedProcess]:
    """Starts every command at once (the processes of one run must meet), waits for all."""
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for cmd, env in cmds_envs]
    out = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=timeout)
            out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    return out


def _workers(mode: str, out_dir: pathlib.Path, timeout=TIMEOUT_S) -> list[subprocess.CompletedProcess]:
    address = f"localhost:{_free_port()}"
    return _run_all([([sys.executable, __file__, mode, address, str(i), str(out_dir / f"{mode}{i}.json")], _env(2))
                     for i in range(2)], timeout)


@pytest.fixture(scope="module")
def gloo(tmp_path_factory):
    """Fails the module's tests, with the cause, unless two processes can initialise and all-gather.

    A failure here is a failure, not a skip: a broken jax.distributed setup or collective is what
    these tests exist to catch. The bound is generous (a loaded machine starts JAX slowly).
    """
    out = tmp_path_factory.mktemp("probe")
    try:
        procs = _workers("probe", out, timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"2-process CPU probe (jax.distributed + gloo all-gather) did not finish in {PROBE_TIMEOUT_S} s")
    if any(p.returncode for p in procs):
        err = next(p.stderr for p in procs if p.returncode)
        pytest.fail(f"cross-process CPU collectives failed: {err.strip()[-2000:]}")


def test_helpers_and_reward_slices_across_processes(gloo, tmp_path):
    procs = _workers("helpers", tmp_path)
    for p in procs:
        assert p.returncode == 0, p.stderr[-4000:]
    results = [json.loads((tmp_path / f"helpers{i}.json").read_text()) for i in range(2)]
    for i, r in enumerate(results):
        assert r["process"] == [i, 2] and r["addressable"] is False
        assert r["to_host_ok"] and r["jit_ok"]
        assert r["rows"] == [0, 0, 1, 1]
        # Process i verified only its 2 prompts x n=2 responses, with their own answers...
        assert r["scored"] == [[f"t{j}", f"a{j // 2}"] for j in range(4 * i, 4 * i + 4)]
        # ...and every process got all 8 rewards, in global row order.
        assert r["rewards"] == [float(j) for j in range(8)]


def _train_cmd(workdir, steps, process=None, address=None):
    cmd = [sys.executable, str(REPO / "launch/train.py"), "--config=" + str(REPO / "configs/tiny.py"),
           f"--workdir={workdir}", f"--config.trainer.total_steps={steps}", *TRAIN_FLAGS]
    if process is not None:
        cmd += [f"--coordinator_address={address}", "--num_processes=2", f"--process_id={process}"]
    return cmd


def _rows(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_match_one_process_and_resume(gloo, tmp_path):
    """2 x 2 devices for 2 steps, then resumed from the checkpoint for step 3 == 1 x 4 devices for 3 steps."""
    single, multi = tmp_path / "single", tmp_path / "multi"

    def two_processes(steps):
        address = f"localhost:{_free_port()}"
        return [(_train_cmd(multi, steps, i, address), _env(2)) for i in range(2)]

    # The single-process run shares the first launch's wall time (the machine may have few cores).
    procs = _run_all([(_train_cmd(single, 3), _env(4)), *two_processes(2)])
    procs += _run_all(two_processes(3))
    for p in procs:
        assert p.returncode == 0, p.stderr[-4000:]
    assert "resumed from step 2" in procs[-2].stdout
    assert "step 3/3" in procs[-2].stdout and "step 3/3" not in procs[-1].stdout  # process 0 logs
    ref, got = _rows(single), _rows(multi)
    assert [r["step"] for r in ref] == [r["step"] for r in got] == [1, 2, 3]
    for a, b in zip(ref, got):
        for key in COMPARED:
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-7), (a["step"], key)
    assert sorted(p.name for p in (multi / "checkpoints").iterdir() if p.name.isdigit()) == ["2", "3"]
    assert sorted(p.name for p in multi.iterdir()) == sorted(p.name for p in single.iterdir())


# ------------------------------------------------------------------------------------------ workers
def _probe() -> dict:
    import jax
    import numpy as np
    from jax.experimental import multihost_utils

    gathered = multihost_utils.process_allgather(np.array([jax.process_index()]), tiled=True)
    return {"gathered": gathered.tolist()}


def _helpers() -> dict:
    """Exercises `rlvr_jax.distributed` and `RLLoop._score_slice` on a (1, 4, 1) mesh over 2 processes."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from rlvr_jax import distributed, sharding
    from rlvr_jax.data.batching import PromptBatch
    from rlvr_jax.data.datasets import Example
    from rlvr_jax.training.rl_loop import LoopSettings, Placement, RLLoop, RunOutputs, StepFns
    from rlvr_jax.training.rollout_batch import RolloutSettings

    sharder = sharding.Sharder(sharding.make_mesh((1, 4, 1)))
    host = np.arange(24, dtype=np.float32).reshape(8, 3)
    arr = distributed.put_rows({"x": host}, sharder)["x"]
    doubled = jax.jit(lambda x: x * 2)(arr)
    total = jax.jit(jnp.sum, out_shardings=sharder.replicated())(arr)
    got = distributed.to_host({"doubled": doubled, "total": total, "local": np.ones(2)})

    scored = []

    def score_fn(texts, answers):  # reward = the global row index written in the text
        scored.extend([t, a] for t, a in zip(texts, answers))
        return [float(t[1:]) for t in texts]

    loop = RLLoop(model_cfg=None, state=None, ref_params=None, tokenizer=None, prompts=None,
                  rollout=RolloutSettings(n=2), settings=LoopSettings(total_steps=1),
                  fns=StepFns(generate=None, logprobs=None, update=None, score=score_fn),
                  outputs=RunOutputs(checkpointer=None, writer=None, console=None),
                  placement=Placement(None, jax.process_index(), jax.process_count()))
    examples = tuple(Example(question=f"q{i}", answer=f"a{i}") for i in range(4))
    batch = PromptBatch(examples, np.arange(4, dtype=np.int32), step=0, epoch=0)
    rewards = loop._score_slice([f"t{j}" for j in range(8)], batch)
    return {
        "process": [jax.process_index(), jax.process_count()],
        "addressable": arr.is_fully_addressable,
        "to_host_ok": bool(np.array_equal(got["doubled"], 2 * host) and got["local"].shape == (2,)),
        "jit_ok": float(got["total"]) == float(host.sum()),
        "rows": distributed.allgather_rows(np.full(2, jax.process_index())).tolist(),
        "scored": scored, "rewards": rewards.tolist(),
    }


if __name__ == "__main__":
    mode, address, process, out = sys.argv[1:5]
    sys.path.insert(0, str(REPO))
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(address, 2, int(process), initialization_timeout=60)
    result = {"probe": _probe, "helpers": _helpers}[mode]()
    pathlib.Path(out).write_text(json.dumps(result))
