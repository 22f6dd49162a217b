"""launch/train.py end to end on the tiny config: no compiles after step 1, `--dry_run` bytes, and
the `:algo=ppo` and `:reward=none` recipe variants.
"""

import json

import pytest

from tests import train_cli

# configs/tiny.py's architecture, restated here so the expected bytes do not come from the code.
VOCAB, HIDDEN, INTER, LAYERS, HEADS, KV_HEADS = 320, 64, 128, 2, 4, 2
HEAD_DIM = HIDDEN // HEADS


def _tiny_param_count() -> int:
    """Qwen2 with tied embeddings: embedding, per layer q/k/v (with bias), o, gate/up/down, 2 norms; final norm."""
    q = HIDDEN * HEADS * HEAD_DIM + HEADS * HEAD_DIM
    kv = 2 * (HIDDEN * KV_HEADS * HEAD_DIM + KV_HEADS * HEAD_DIM)
    o = HEADS * HEAD_DIM * HIDDEN
    mlp = 3 * HIDDEN * INTER
    layer = q + kv + o + mlp + 2 * HIDDEN
    return VOCAB * HIDDEN + LAYERS * layer + HIDDEN


def test_dry_run_prints_hand_computed_bytes(tmp_path):
    # One device, so every piece is whole on it; batch 2 prompts x n=2, prompt <= 512, response <= 16;
    # padded micro-batches of 2 rows (the packed plan is checked in test_packing.py).
    proc = train_cli.run(tmp_path, "--dry_run", "--config.mesh.shape=(1,1,1)", "--config.actor.packing=false",
                         devices=1)
    plan = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not (tmp_path / "metrics.jsonl").exists()  # Nothing trained.
    f32 = 4
    params = _tiny_param_count() * f32
    assert _tiny_param_count() == 94_784
    length, seqs, micro, chunk = 512 + 16, 2 * 2, 2, 512
    expected = {
        "params (master)": params,
        "adamw moments": 2 * params,  # mu and nu in float32
        "gradients": params,
        "reference params": params,  # tiny keeps the KL reference in float32
        "sampler weight copy (compute dtype)": 0,  # one CPU device, no cast: per-layer views, no copy
        # K and V, every layer, every sequence, full length, float32.
        "kv cache (one rollout sub-batch)": 2 * LAYERS * seqs * length * KV_HEADS * HEAD_DIM * f32,
        # No remat: every layer keeps its q,k,v,o-sized (4 x hidden) and gate,up,act (3 x inter)
        # activations plus the float32 [heads, t, t] attention scores of one micro-batch.
        "activations (one micro-batch, remat)": LAYERS * micro * length * (
            (4 * HIDDEN + 3 * INTER) * f32 + HEADS * length * f32),
        # Logits of one chunk and their gradient, float32.
        "logits block (float32, fwd+bwd)": 2 * micro * chunk * VOCAB * f32,
    }
    for name, value in expected.items():
        assert plan[name] == value, name
    resident = 4 * params  # master + 2 moments + reference
    assert plan["resident (params, moments, reference)"] == resident
    rollout = expected["kv cache (one rollout sub-batch)"]
    update = (params + expected["activations (one micro-batch, remat)"]
              + expected["logits block (float32, fwd+bwd)"])
    assert plan["peak"] == resident + max(rollout, update)
    # AdamW's first moment in bf16: half its bytes.
    proc = train_cli.run(tmp_path, "--dry_run", "--config.mesh.shape=(1,1,1)", "--config.actor.mu_dtype=bfloat16",
                         devices=1)
    assert json.loads(proc.stdout.strip().splitlines()[-1])["adamw moments"] == params + params // 2
    # bf16 compute over float32 weights, or several devices: the sampler holds its own copy.
    proc = train_cli.run(tmp_path, "--dry_run", "--config.mesh.shape=(1,1,1)", "--config.model.dtype=bfloat16",
                         "--config.actor.packing=false", devices=1)
    bf16_plan = json.loads(proc.stdout.strip().splitlines()[-1])
    assert bf16_plan["sampler weight copy (compute dtype)"] == params // 2
    # Matmul outputs stay float32 (model.residual_dtype): activations are counted at 4 bytes, unless the
    # residual is bf16 too.
    assert bf16_plan["activations (one micro-batch, remat)"] == expected["activations (one micro-batch, remat)"]
    proc = train_cli.run(tmp_path, "--dry_run", "--config.mesh.shape=(1,1,1)", "--config.model.dtype=bfloat16",
                         "--config.model.residual_dtype=bfloat16", "--config.actor.packing=false", devices=1)
    assert json.loads(proc.stdout.strip().splitlines()[-1])["activations (one micro-batch, remat)"] == LAYERS * (
        micro * length * ((4 * HIDDEN + 3 * INTER) * 2 + HEADS * length * f32))
    proc = train_cli.run(tmp_path, "--dry_run", "--config.mesh.shape=(2,1,1)", devices=2)  # data parallel
    assert json.loads(proc.stdout.strip().splitlines()[-1])["sampler weight copy (compute dtype)"] == params


def test_nothing_compiles_after_step_one(tmp_path):
    """Rollout, old/reference log-probs and the update all compile in step 1 and are reused after."""
    train_cli.run(tmp_path, "--config.trainer.total_steps=4", "--config.trainer.save_every=0")
    rows = train_cli.train_rows(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert rows[0]["perf/compiles"] >= 3  # At least sampler, log-probs (policy = reference) and update.
    assert [r["perf/compiles"] for r in rows[1:]] == [0, 0, 0], rows
    assert rows[0]["actor/kl"] == pytest.approx(0.0, abs=1e-6)  # The KL reference is on and computed.


def test_ppo_variant_trains_with_a_critic_and_resumes_it(tmp_path):
    flags = ("--config.trainer.save_every=2", "--config.critic.lr=1e-3")
    train_cli.run(tmp_path, "--config.trainer.total_steps=2", *flags, config="configs/tiny.py:algo=ppo")
    resolved = json.loads((tmp_path / "config.json").read_text())
    assert resolved["algorithm"]["name"] == "gae" and resolved["actor"]["use_kl_loss"] is False
    # The checkpoint holds the critic too: restoring {actor, critic} from it must work.
    proc = train_cli.run(tmp_path, "--config.trainer.total_steps=3", *flags, config="configs/tiny.py:algo=ppo")
    assert "resumed from step 2" in proc.stdout + proc.stderr
    rows = train_cli.train_rows(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        # The random tiny model earns no reward and the value head starts at zero, so the returns are
        # only PPO's KL-in-reward penalty (0.001 x k1 per token) and the value loss is tiny
        # (a critic reading garbage would show here).
        assert r["reward/mean"] == 0.0, r
        assert 0.0 <= r["critic/vf_loss"] < 1e-4 and abs(r["critic/vpred_mean"]) < 1e-2, r
        assert "critic/grad_norm" in r and "actor/kl" not in r  # Critic updated; PPO runs without KL.
        assert r["actor/grad_norm"] > 0  # The entropy bonus still trains the actor.


def test_reward_none_variant_trains_on_entropy_alone(tmp_path):
    train_cli.run(tmp_path, "--config.trainer.total_steps=2", "--config.trainer.save_every=0",
                  config="configs/tiny.py:reward=none")
    resolved = json.loads((tmp_path / "config.json").read_text())
    assert resolved["reward"]["name"] == "none"
    for r in train_cli.train_rows(tmp_path):
        assert (r["reward/mean"], r["reward/max"], r["actor/adv_std"], r["actor/pg_loss"]) == (0.0, 0.0, 0.0, 0.0)
        assert r["actor/grad_norm"] > 0  # The entropy bonus (and KL) still move the policy.
    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert samples and all(s["reward"] == 0.0 for s in samples)
