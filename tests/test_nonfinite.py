"""Non-finite stop: RLLoop with fake pieces (an update that reports a NaN loss at one step).

The fake update adds 1 to a scalar "param" at every finite step and leaves the state unchanged at
the bad one (as the real update does), so the checkpointed value names the step it belongs to.
"""

import io
import types

import flax
import jax.numpy as jnp
import numpy as np
import pytest

from rlvr_jax.data.batching import PromptIterator
from rlvr_jax.data.datasets import Example
from rlvr_jax.training.checkpoint import Checkpointer
from rlvr_jax.training.rl_loop import LoopSettings, NonFiniteError, RLLoop, RunOutputs, StepFns
from rlvr_jax.training.rollout_batch import RolloutSettings
from rlvr_jax.training.writers import ConsoleLog, MetricsWriter

N, PROMPT_LEN, RESPONSE_LEN = 2, 3, 4


@flax.struct.dataclass
class _State:
    params: jnp.ndarray


def _fake_generate(params, cfg, prompt_ids, *, n, **kwargs):
    rows = len(prompt_ids) * n
    return types.SimpleNamespace(
        prompt_ids=np.ones((rows, PROMPT_LEN), np.int32), prompt_mask=np.ones((rows, PROMPT_LEN), np.int32),
        response_ids=np.full((rows, RESPONSE_LEN), 2, np.int32),
        response_mask=np.ones((rows, RESPONSE_LEN), np.int32),
        logprob_array=np.full((rows, RESPONSE_LEN), -1.0, np.float32),
        tokens=[[2] * RESPONSE_LEN] * rows, finish_reason=["stop"] * rows,
        response_lengths=np.full(rows, RESPONSE_LEN, np.int32))


def _fake_update(bad_steps):
    calls = {"n": 0}

    def update(state, batch):
        calls["n"] += 1
        if calls["n"] in bad_steps:  # the real update skips a non-finite step: state unchanged
            return state, {"loss": np.float32(np.nan), "grad_norm": np.float32(np.inf), "finite": np.float32(0),
                           "num_skipped": np.float32(1), "num_steps": np.float32(1)}
        return _State(state.params + 1), {"loss": np.float32(0.5), "grad_norm": np.float32(1.0),
                                          "finite": np.float32(1), "num_skipped": np.float32(0),
                                          "num_steps": np.float32(1)}

    return update


def _loop(tmp_path, *, bad_steps, save_every, on_nonfinite="stop", total_steps=4):
    examples = [Example(question="What is 1 + 1?", answer="2")]
    checkpointer = Checkpointer(tmp_path / "checkpoints", save_every=save_every, keep=10, async_save=False)
    stream = io.StringIO()
    loop = RLLoop(
        model_cfg=None, state=_State(jnp.zeros((), jnp.float32)), ref_params=None,
        tokenizer=types.SimpleNamespace(batch_decode=lambda rows, **kw: ["\\boxed{2}"] * len(rows)),
        prompts=PromptIterator(examples, 1, seed=0), rollout=RolloutSettings(n=N, max_new_tokens=RESPONSE_LEN),
        settings=LoopSettings(total_steps=total_steps, eval_before_train=False, log_samples=0,
                              recompute_old_logp=False, on_nonfinite=on_nonfinite),
        fns=StepFns(generate=_fake_generate, logprobs=None, update=_fake_update(bad_steps),
                    score=lambda texts, answers: np.ones(len(texts), np.float32)),
        outputs=RunOutputs(checkpointer=checkpointer, writer=MetricsWriter(tmp_path, enabled=True),
                           console=ConsoleLog(total_steps, stream=stream)))
    loop._prompt_ids = lambda example: [1, 1, 1]  # no tokenizer in this test
    return loop, checkpointer, stream


def _step_dirs(checkpointer):
    return sorted(int(p.name) for p in checkpointer.directory.iterdir() if p.name.isdigit())


def _saved_param(checkpointer, step):
    restored, host, got = checkpointer.restore(_State(jnp.zeros((), jnp.float32)), step)
    assert got == step and host["step"] == step
    return float(restored.params)


@pytest.mark.parametrize("save_every", [1, 0], ids=["periodic_saves", "final_save_only"])
def test_first_nonfinite_step_stops_and_keeps_last_good_state(tmp_path, save_every):
    loop, checkpointer, _ = _loop(tmp_path, bad_steps={3}, save_every=save_every)
    with pytest.raises(NonFiniteError) as info:
        loop.run()
    message = str(info.value)
    assert "at step 3" in message and "loss=nan" in message and "grad_norm=inf" in message
    assert "checkpoint step 2" in message
    # Step 2's state (two finite updates) is the latest checkpoint; nothing of step 3 or later.
    assert checkpointer.latest_step() == 2
    assert _saved_param(checkpointer, 2) == 2.0
    assert max(_step_dirs(checkpointer)) == 2
    assert [h["step"] for h in loop.history] == [1, 2]  # step 3 never logged as trained
    checkpointer.close()


def test_nonfinite_at_step_one_saves_the_initial_state(tmp_path):
    loop, checkpointer, _ = _loop(tmp_path, bad_steps={1}, save_every=0)
    with pytest.raises(NonFiniteError, match="at step 1 .*checkpoint step 0"):
        loop.run()
    assert _step_dirs(checkpointer) == [0] and _saved_param(checkpointer, 0) == 0.0
    checkpointer.close()


def test_skip_policy_skips_isolated_bad_steps(tmp_path):
    loop, checkpointer, stream = _loop(tmp_path, bad_steps={3}, save_every=0, on_nonfinite="skip")
    loop.run()
    assert "step 3: non-finite loss or gradient" in stream.getvalue()
    assert checkpointer.latest_step() == 4
    assert _saved_param(checkpointer, 4) == 3.0  # steps 1, 2 and 4 updated; 3 skipped
    assert [h["actor/finite"] for h in loop.history] == [1.0, 1.0, 0.0, 1.0]
    checkpointer.close()


def test_unknown_policy_is_rejected():
    with pytest.raises(ValueError, match="on_nonfinite"):
        LoopSettings(total_steps=1, on_nonfinite="ignore")


def test_train_cli_stops_on_overflowing_checkpoint(tmp_path):
    """launch/train.py with a model whose logits overflow to inf: stops at step 1, exit != 0, no step saved."""
    import os
    import pathlib
    import subprocess
    import sys

    import torch

    from tests.hf_fixtures import make_hf_model

    repo = pathlib.Path(__file__).resolve().parents[1]
    model_dir = tmp_path / "overflow"
    model = make_hf_model("qwen2", model_dir, vocab_size=320)
    with torch.no_grad():  # finite weights whose products overflow float32: logits are +-inf
        model.model.norm.weight.mul_(1e20)
        model.lm_head.weight.mul_(1e20)
    model.save_pretrained(model_dir)
    workdir = tmp_path / "run"
    cmd = [sys.executable, str(repo / "launch/train.py"), f"--config={repo / 'configs/tiny.py'}",
           f"--workdir={workdir}", "--config.model.source=hf", f"--config.model.path={model_dir}",
           "--config.model.tokenizer_path=builtin:bytes", "--config.trainer.total_steps=3",
           "--config.trainer.save_every=1", "--config.trainer.progress=False"]
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert "error: non-finite loss or gradient at step 1" in proc.stderr, proc.stderr[-4000:]
    assert "loss=nan" in proc.stderr and "checkpoint step 0" in proc.stderr
    assert "Traceback" not in proc.stderr
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [0]  # the initial (last good) state; nothing of step 1 or later
    assert not (workdir / "metrics.jsonl").exists() or "\"step\": 1" not in (workdir / "metrics.jsonl").read_text()
