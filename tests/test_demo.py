"""The CPU demo config end to end, shrunk to 2 steps: real SmolLM2 weights, held-out eval, report."""

import json
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from configs import smollm2_1shot_cpu  # noqa: E402


def test_demo_config_two_steps(tmp_path, smollm2_dir, capsys):
    from rlvr_jax.experiment import train, validate

    c = smollm2_1shot_cpu.get_config()
    validate(c)  # The demo needs no argument: model.path unset -> the cached GGUF conversion.
    assert c.model.path == "" and c.model.source == "smollm2"
    c.model.path = str(smollm2_dir)
    c.trainer.total_steps, c.trainer.eval_every = 2, 2
    c.trainer.batch_size, c.rollout.n, c.actor.micro_batch_size = 1, 2, 2
    c.rollout.max_new_tokens, c.eval.max_new_tokens = 8, 8
    c.eval.benchmarks = ("synthetic:add2d:4",)
    c.trainer.progress = False
    out = train(c, tmp_path)

    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval/add2d_4/accuracy" in r]
    assert [r["step"] for r in evals] == [0, 2]  # step 0 included
    assert [r["step"] for r in rows if "reward/mean" in r] == [1, 2]
    heldout = (tmp_path / "heldout" / "add2d_4.jsonl").read_text()
    assert "What is 47 + 38?" not in heldout  # the training example never leaks into the held-out set
    assert (tmp_path / "curves.png").stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "| add2d_4 | 0 |" in printed and "pts |" in printed  # the before / after table
    last = out["last"]
    # An 8-token budget: the longest response hits it exactly when some response was cut (clip ratio).
    assert last["response/length_min"] >= 1
    assert (last["response/length_max"] == 8) == (last["response/clip_ratio"] > 0), last
