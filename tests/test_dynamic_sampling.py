"""DAPO dynamic sampling in the RL loop, with a fake sampler and verifier: which groups are kept, how
the rounds' rollouts are merged, the saturated 1-shot fallback, and its metrics."""

import numpy as np

from rlvr_jax.data.batching import PromptIterator
from rlvr_jax.data.datasets import Example
from rlvr_jax.sampling.api import RolloutResult
from rlvr_jax.training import dynamic_sampling as ds
from rlvr_jax.training.rl_loop import LoopSettings, RLLoop, RunOutputs, StepFns
from rlvr_jax.training.rollout_batch import RolloutSettings

PAD = 0


def fake_generate(params, cfg, prompts, *, n, seed, **kwargs):
    """Row (p, s): prompt ids as given (left-padded), response [id, s, k...] of a seed-dependent length."""
    del params, cfg, kwargs
    rows = [(p, [p[-1], s + 1] + [7] * (seed % 3)) for p in prompts for s in range(n)]
    width_p, width_r = max(len(p) for p, _ in rows), max(len(r) for _, r in rows)
    prompt_ids = np.array([[PAD] * (width_p - len(p)) + p for p, _ in rows], np.int32)
    response_ids = np.array([r + [PAD] * (width_r - len(r)) for _, r in rows], np.int32)
    lengths = np.array([len(r) for _, r in rows], np.int32)
    mask = (np.arange(width_r)[None] < lengths[:, None]).astype(np.int32)
    return RolloutResult(
        tokens=[r for _, r in rows], logprobs=[-np.ones(len(r), np.float32) for _, r in rows],
        finish_reason=["stop"] * len(rows), response_ids=response_ids, response_mask=mask,
        logprob_array=-mask.astype(np.float32), response_lengths=lengths, prompt_ids=prompt_ids,
        prompt_mask=(prompt_ids != PAD).astype(np.int32), prompt_index=np.repeat(np.arange(len(prompts)), n))


class Tokenizer:
    def batch_decode(self, seqs, skip_special_tokens=True):
        return [f"{s[0]}:{s[1]}" for s in seqs]  # "<example id>:<sample index>"


class Console:
    def __init__(self):
        self.lines = []

    def message(self, text):
        self.lines.append(text)


def score_fn(texts, answers):
    # Examples whose answer is "mixed" score by sample parity (an informative group); others all 0.
    return [float(int(t.split(":")[1]) % 2) if a == "mixed" else 0.0 for t, a in zip(texts, answers)]


def _loop(examples, batch_size=2, n=2, rounds=10):
    loop = RLLoop(model_cfg=None, state=type("S", (), {"params": None})(), ref_params=None, tokenizer=Tokenizer(),
                  prompts=PromptIterator(examples, batch_size, seed=3), rollout=RolloutSettings(n=n, pad_id=PAD),
                  settings=LoopSettings(total_steps=2, dynamic_sampling=True, max_sampling_rounds=rounds),
                  fns=StepFns(generate=fake_generate, logprobs=None, update=None, score=score_fn),
                  outputs=RunOutputs(checkpointer=None, writer=None, console=Console()))
    loop._prompt_ids = lambda ex: [1] * int(ex.question[1:]) + [100 + int(ex.question[1:])]
    return loop


def _rollout(loop, step):
    return loop._filtered_rollout(step, loop.prompts.batch_at(step - 1))


def test_informative_groups():
    np.testing.assert_array_equal(ds.informative_groups([1, 1, 0, 1, 0, 0, 0.5, 0.5], 2), [False, True, False, False])


def test_keeps_only_informative_groups_and_merges_rounds():
    examples = [Example(question=f"q{i}", answer="mixed" if i in (1, 4) else "same") for i in range(8)]
    loop = _loop(examples, batch_size=2)
    batch, result, texts, scores, metrics = _rollout(loop, 1)
    assert [e.answer for e in batch.examples] == ["mixed", "mixed"]
    assert metrics["sampling/filled_frac"] == 0.0 and metrics["sampling/all_equal"] == 0.0
    assert metrics["sampling/rounds"] > 1  # the first batch alone cannot hold two of the two mixed examples
    assert metrics["sampling/kept_frac"] == 2 / (2 * metrics["sampling/rounds"])
    np.testing.assert_array_equal(scores, [1, 0, 1, 0])
    np.testing.assert_array_equal(result.prompt_index, [0, 0, 1, 1])
    # Each merged row is its source row re-padded: prompt right-aligned, response left-aligned.
    for row, ex in enumerate(e for e in batch.examples for _ in range(2)):
        prompt = loop._prompt_ids(ex)
        got_p = result.prompt_ids[row][result.prompt_mask[row] > 0]
        np.testing.assert_array_equal(got_p, prompt)
        assert result.prompt_mask[row, -1] == 1  # left-padded
        length = result.response_lengths[row]
        np.testing.assert_array_equal(result.response_ids[row, :length], result.tokens[row])
        assert result.response_mask[row].sum() == length and np.all(result.response_ids[row, length:] == PAD)
        assert texts[row] == f"{prompt[-1]}:{row % 2 + 1}"
    # Deterministic: the same step draws the same rounds again (a resumed run matches).
    again = _rollout(_loop(examples, batch_size=2), 1)
    assert [e.question for e in again[0].examples] == [e.question for e in batch.examples]


def test_saturated_one_shot_batch_falls_back_without_spinning():
    one_shot = [Example(question="q3", answer="same")] * 4  # 1-shot: one example repeated
    loop = _loop(one_shot, batch_size=4, rounds=10)
    calls = []
    loop.generate_fn = lambda *a, **k: calls.append(1) or fake_generate(*a, **k)
    batch, result, _, scores, metrics = _rollout(loop, 1)
    assert len(calls) == 1  # one round, not ten
    assert len(batch.examples) == 4 and result.response_ids.shape[0] == 8
    assert metrics["sampling/all_equal"] == 1.0 and metrics["sampling/filled_frac"] == 1.0
    assert metrics["sampling/kept_frac"] == 0.0
    assert len(loop.console.lines) == 1 and "every group" in loop.console.lines[0]
    _rollout(loop, 2)
    assert len(loop.console.lines) == 1  # said once while it stays saturated


def test_rounds_exhausted_tops_up_with_equal_groups():
    examples = [Example(question=f"q{i}", answer="mixed" if i < 2 else "same") for i in range(6)]
    loop = _loop(examples, batch_size=3, rounds=2)
    batch, _, _, scores, metrics = _rollout(loop, 1)
    # The same two draws, replayed: informative groups first (in draw order), then the dropped ones.
    it = PromptIterator(examples, 3, seed=3)
    drawn = list(it.batch_at(0).examples) + list(it.resample(0, 1).examples)
    want = ([e for e in drawn if e.answer == "mixed"] + [e for e in drawn if e.answer != "mixed"])[:3]
    assert list(batch.examples) == want
    kept = min(sum(e.answer == "mixed" for e in drawn), 3)
    assert metrics["sampling/filled_frac"] == (3 - kept) / 3 and metrics["sampling/rounds"] == 2
    np.testing.assert_array_equal(ds.informative_groups(scores, 2), [True] * kept + [False] * (3 - kept))
