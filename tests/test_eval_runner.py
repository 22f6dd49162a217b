"""Evaluation runner: protocol selection, metric wiring on a fake sampler, validation fn, launch/eval.py."""

import json
import pathlib
import re
import subprocess
import sys
import types

import numpy as np
import pytest

from rlvr_jax.data.tokenizers import BYTE_TOKENIZER, load_tokenizer, stop_token_ids
from rlvr_jax.evaluation import (PAPER_BENCHMARKS, Benchmark, EvalSettings, Evaluator, evaluate,
                                 get_benchmark, make_validation_fn, mean_pass_at_k, metrics,
                                 paper_average, pass_at_k, runner, write_outputs)
from rlvr_jax.rewards.extract import extract_answer

REPO = pathlib.Path(__file__).resolve().parents[1]
N_PROBLEMS = 6


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(BYTE_TOKENIZER)


@pytest.fixture
def problems_file(tmp_path):
    """Problems "Q<p>: what is <p> times 7?" with answer 7p."""
    path = tmp_path / "toy.jsonl"
    rows = [{"problem": f"Q{p}: what is {p} times 7?", "answer": str(7 * p)} for p in range(N_PROBLEMS)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def exact_scorer(responses, golds):
    """A stand-in for RewardPool.score: the verifier's extraction, then string equality."""
    return np.array([float(extract_answer(r) == g) for r, g in zip(responses, golds)])


class FakeGenerate:
    """Answers problem p correctly in its first `correct(p, n)` samples; records every call."""

    def __init__(self, tokenizer, correct):
        self.tokenizer, self.correct, self.calls = tokenizer, correct, []
        self.stop = tokenizer.convert_tokens_to_ids("<|im_end|>")

    def __call__(self, params, cfg, prompts, *, n, **kwargs):
        self.calls.append(dict(kwargs, n=n, num_prompts=len(prompts)))
        tokens, reasons = [], []
        for ids in prompts:
            p = int(re.search(r"Q(\d+):", self.tokenizer.decode(ids)).group(1))
            for s in range(n):
                answer = 7 * p if s < self.correct(p, n) else 7 * p + 1
                text = f"So the answer is \\boxed{{{answer}}}."
                # The last sample of each problem runs out of tokens (no stop token).
                stop = [self.stop] if s < n - 1 or n == 1 else []
                tokens.append(self.tokenizer.encode(text, add_special_tokens=False) + stop)
                reasons.append("stop" if stop else "length")
        return types.SimpleNamespace(tokens=tokens, finish_reason=reasons)


def sampled(path, n=4):
    return Benchmark("toy_sampled", str(path), question_key="problem", answer_key="answer",
                     temperature=0.6, n=n)


def test_protocol_resolution_follows_the_paper_and_overrides():
    default = EvalSettings()
    math500 = runner.resolve_protocol(get_benchmark("math500"), default)
    aime = runner.resolve_protocol(get_benchmark("aime24"), default)
    assert (math500.greedy, math500.n, math500.max_new_tokens, math500.template) == (
        True, 1, 3072, "qwen_math_cot")
    assert (aime.temperature, aime.top_p, aime.n, aime.metric) == (0.6, 1.0, 8, "avg@8")
    forced_greedy = runner.resolve_protocol(get_benchmark("aime24"), EvalSettings(greedy=True))
    assert (forced_greedy.greedy, forced_greedy.n) == (True, 1)
    forced_sampled = runner.resolve_protocol(get_benchmark("math500"),
                                             EvalSettings(greedy=False, n=4, max_new_tokens=64))
    assert (forced_sampled.temperature, forced_sampled.n, forced_sampled.max_new_tokens) == (0.6, 4, 64)
    # n only applies to sampled benchmarks: greedy would repeat one answer n times.
    assert runner.resolve_protocol(get_benchmark("math500"), EvalSettings(n=4)).n == 1
    with pytest.raises(ValueError):
        EvalSettings(batch_size=0)


def test_greedy_and_sampled_benchmarks_call_the_sampler_per_protocol(tokenizer, problems_file):
    fake = FakeGenerate(tokenizer, correct=lambda p, n: n)
    settings = EvalSettings(batch_size=4, max_new_tokens=32, progress=False, seed=3)
    results, records = evaluate(None, None, tokenizer, [str(problems_file), sampled(problems_file)],
                                data_dir=None, scorer=exact_scorer, settings=settings,
                                generate_fn=fake)
    greedy_calls = [c for c in fake.calls if c["greedy"]]
    sampled_calls = [c for c in fake.calls if not c["greedy"]]
    assert [c["num_prompts"] for c in greedy_calls] == [4, 2]  # batch_size problems per call
    assert all(c["n"] == 1 for c in greedy_calls)
    assert all(c["n"] == 4 and c["temperature"] == 0.6 and c["top_p"] == 1.0 for c in sampled_calls)
    assert all(c["max_new_tokens"] == 32 for c in fake.calls)
    assert all(tuple(c["stop_token_ids"]) == stop_token_ids(tokenizer) for c in fake.calls)
    # Every batch draws from its own random stream.
    assert len({c["seed"] for c in fake.calls}) == len(fake.calls)
    assert results["toy"]["metric"] == "acc" and "pass@2" not in results["toy"]
    assert results["toy_sampled"]["metric"] == "avg@4"
    assert results["toy"]["score"] == 1.0 and results["toy"]["decoding"] == "greedy"
    assert len(records["toy"]) == N_PROBLEMS and len(records["toy_sampled"]) == 4 * N_PROBLEMS


def test_avg_pass_and_maj_at_k_on_known_answers(tokenizer, problems_file):
    n = 4
    correct = lambda p, n: p % (n + 1)  # 0..4 correct samples of 4, then 0 again
    fake = FakeGenerate(tokenizer, correct)
    settings = EvalSettings(batch_size=4, progress=False)
    results, records = evaluate(None, None, tokenizer, [sampled(problems_file, n)], data_dir=None,
                                scorer=exact_scorer, settings=settings, generate_fn=fake)
    row = results["toy_sampled"]
    counts = [correct(p, n) for p in range(N_PROBLEMS)]
    assert row["score"] == pytest.approx(np.mean(counts) / n)
    for k in (1, 2, 4):
        expected = np.mean([pass_at_k(n, c, k) for c in counts])
        assert row[f"pass@{k}"] == pytest.approx(expected)
    # Majority: correct answers win with 3 or 4 of 4 votes; at 2-2 the earlier (correct) cluster.
    assert row["maj@4"] == pytest.approx(np.mean([c >= 2 for c in counts]))
    assert row["num_problems"] == N_PROBLEMS and row["n"] == n
    assert row["truncated"] == pytest.approx(1 / n)  # the fake's last sample per problem
    rec = records["toy_sampled"][5]  # problem 1, sample 1: wrong (1 correct sample)
    assert (rec.index, rec.sample, rec.gold, rec.extracted, rec.correct) == (1, 1, "7", "8", False)
    assert rec.response == "So the answer is \\boxed{8}."  # the stop token is not part of it


def test_half_correct_gives_accuracy_one_half(tokenizer, problems_file):
    fake = FakeGenerate(tokenizer, correct=lambda p, n: n // 2)
    results, _ = evaluate(None, None, tokenizer, [sampled(problems_file, 8)], data_dir=None,
                          scorer=exact_scorer, settings=EvalSettings(progress=False),
                          generate_fn=fake)
    assert results["toy_sampled"]["score"] == 0.5
    assert results["toy_sampled"]["pass@8"] == 1.0
    assert results["toy_sampled"]["pass@1"] == pytest.approx(mean_pass_at_k([[1] * 4 + [0] * 4], 1))


def test_majority_vote_clusters_normalised_answers():
    assert metrics.majority_correct(["\\dfrac12", "\\frac{1}{2}", "3", None], [True, True, False, False])
    assert not metrics.majority_correct(["3", "5", "5", None], [True, False, False, False])
    assert not metrics.majority_correct([None, None], [False, False])
    assert metrics.pass_ks(8) == [1, 2, 4, 8] and metrics.pass_ks(6) == [1, 2, 4, 6]


def test_validation_fn_keys_and_step_samples(tokenizer, problems_file, tmp_path):
    fake = FakeGenerate(tokenizer, correct=lambda p, n: n // 2)
    validate = make_validation_fn(
        tokenizer, [str(problems_file), sampled(problems_file, 2)], data_dir=None,
        scorer=exact_scorer, settings=EvalSettings(progress=False, limit=4), cfg=None,
        generate_fn=fake, out_dir=tmp_path / "eval_samples")
    for step in (0, 20):
        scores = validate({"w": 0}, step)
        assert (tmp_path / "eval_samples" / f"step_{step:06d}" / "toy_sampled.jsonl").is_file()
    assert scores["eval/toy/accuracy"] == 0.0  # greedy: n // 2 == 0 correct
    assert scores["eval/toy_sampled/accuracy"] == 0.5  # avg@2
    assert scores["eval/toy_sampled/pass@2"] == 1.0
    assert "eval/average/accuracy" in scores and "eval/toy/pass@2" not in scores
    assert all(isinstance(v, float) for v in scores.values())
    assert sum(c["num_prompts"] for c in fake.calls) == 2 * 2 * 4  # 2 calls x 2 sets x limit 4


def test_write_outputs_and_paper_average(tokenizer, problems_file, tmp_path):
    fake = FakeGenerate(tokenizer, correct=lambda p, n: n)
    evaluator = Evaluator(tokenizer, [str(problems_file)], data_dir=None, scorer=exact_scorer,
                          settings=EvalSettings(progress=False), generate_fn=fake)
    results, records = evaluator.run(None, None)
    paths = write_outputs(tmp_path, results, records, meta={"model": "fake"})
    summary = json.loads(paths["summary"].read_text())
    assert summary["benchmarks"]["toy"]["score"] == 1.0 and summary["paper_average"] is None
    assert len(paths["samples/toy"].read_text().splitlines()) == N_PROBLEMS
    assert paths["table"].read_text().startswith("| benchmark | metric | score |")
    six = {name: {"score": 0.1 * i} for i, name in enumerate(PAPER_BENCHMARKS)}
    assert paper_average(six) == pytest.approx(0.25)


def _tiny_config(benchmarks):
    sys.path.insert(0, str(REPO))
    from configs import tiny

    config = tiny.get_config()
    config.eval.benchmarks = benchmarks
    config.trainer.progress = False
    return config


@pytest.mark.parametrize("ppo", [False, True])
def test_checkpoint_workdir_restores_trained_params(tmp_path, ppo):
    """A training workdir (checkpoints/ + config.json) evaluates its params; PPO nests them."""
    import jax

    from rlvr_jax import experiment, models
    from rlvr_jax.training import checkpoint, state

    config = _tiny_config([])
    cfg = experiment.model_config(config)
    params = models.init_params(cfg, jax.random.key(7))
    train_state = state.create_train_state(params, state.OptimizerConfig())
    saved = {"actor": train_state, "critic": {"head": np.ones(3)}} if ppo else train_state
    saver = checkpoint.Checkpointer(tmp_path / "checkpoints", save_every=1, async_save=False)
    saver.save(5, saved, {"epoch": 0}, force=True)
    saver.close()
    (tmp_path / "config.json").write_text(json.dumps(config.to_dict()))  # what a training run writes
    config.model.path = str(tmp_path)  # source stays "random": a workdir path wins
    policy = experiment.load_policy(config, experiment.build_sharder(config))
    assert policy.source["step"] == 5 and policy.cfg == cfg
    for got, want in zip(jax.tree.leaves(policy.params), jax.tree.leaves(params)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert policy.tokenizer.convert_tokens_to_ids("<|im_end|>") == 258  # the run's byte tokenizer


def test_real_sampler_runs_the_sampled_protocol(tokenizer, problems_file):
    """The runner's keyword arguments against the real `generate` (n > 1, sub-batches, stops)."""
    import jax

    from rlvr_jax import models

    config = _tiny_config([])
    cfg = models.ModelConfig.from_hf_dict(config.model.arch.to_dict())
    params = models.init_params(cfg, jax.random.key(0))
    settings = EvalSettings(max_new_tokens=4, limit=3, batch_size=2, sub_batch_size=2,
                            progress=False)
    results, records = evaluate(params, cfg, tokenizer, [sampled(problems_file, n=2)],
                                data_dir=None, scorer=exact_scorer, settings=settings)
    row = results["toy_sampled"]
    assert (row["num_problems"], row["n"], row["metric"]) == (3, 2, "avg@2")
    assert {"pass@1", "pass@2", "maj@2"} <= set(row) and 0 < row["mean_tokens"] <= 4
    assert [(r.index, r.sample) for r in records["toy_sampled"]] == [
        (p, s) for p in range(3) for s in range(2)]


class RecordingBar:
    """Stands in for tqdm.tqdm in the runner: records its total and every update."""

    bars = []

    def __init__(self, total, **kwargs):
        self.total, self.updates = total, []
        RecordingBar.bars.append(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, k):
        self.updates.append(k)

    def set_postfix(self, *args, **kwargs):
        pass


def test_progress_bar_moves_with_the_sampler_and_counts_each_response_once(tokenizer, problems_file,
                                                                           monkeypatch):
    """The real sampler moves the evaluator's bar as rows finish; a generate_fn that reports nothing
    moves it once per call. Either way it ends at problems x n."""
    import jax

    from rlvr_jax import models

    monkeypatch.setattr(runner.tqdm, "tqdm", RecordingBar)
    config = _tiny_config([])
    cfg = models.ModelConfig.from_hf_dict(config.model.arch.to_dict())
    params = models.init_params(cfg, jax.random.key(0))
    settings = EvalSettings(max_new_tokens=4, limit=3, batch_size=3, sub_batch_size=2)
    RecordingBar.bars = []
    evaluate(params, cfg, tokenizer, [sampled(problems_file, n=2)], data_dir=None, scorer=exact_scorer,
             settings=settings)
    (bar,) = RecordingBar.bars
    assert bar.total == 6 and sum(bar.updates) == 6
    assert len([k for k in bar.updates if k > 0]) >= 3  # two slots: rows finish over several segments
    RecordingBar.bars = []
    evaluate(None, None, tokenizer, [str(problems_file)], data_dir=None, scorer=exact_scorer,
             settings=EvalSettings(batch_size=4), generate_fn=FakeGenerate(tokenizer, correct=lambda p, n: n))
    (bar,) = RecordingBar.bars
    assert bar.total == N_PROBLEMS and bar.updates == [4, 2]


def test_launch_settings_and_benchmark_list():
    from rlvr_jax import experiment

    config = _tiny_config(["a.jsonl"])
    assert experiment.eval_settings(config).greedy is True  # validation: config.eval.greedy
    config.eval.greedy = False
    assert experiment.eval_settings(config).greedy is None  # each benchmark's own protocol
    assert experiment.benchmark_list(config, None) == ["a.jsonl"]
    assert experiment.benchmark_list(config, ["paper", "b.jsonl"]) == [
        *PAPER_BENCHMARKS, "b.jsonl"]
    with pytest.raises(ValueError, match="benchmarks"):
        experiment.benchmark_list(config, [])


def test_launch_eval_end_to_end_tiny_model(problems_file, tmp_path):
    """launch/eval.py on the random tiny model: every output is written and the table printed."""
    out = tmp_path / "out"
    cmd = [sys.executable, str(REPO / "launch" / "eval.py"), f"--config={REPO / 'configs' / 'tiny.py'}",
           f"--benchmarks={problems_file}", "--config.eval.limit=3",
           "--config.eval.max_new_tokens=8", "--config.trainer.progress=False", "--config.mesh.num_devices=2",
           f"--out_dir={out}"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| benchmark | metric | score |" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    row = summary["benchmarks"]["toy"]
    assert row["num_problems"] == 3 and row["n"] == 1
    assert summary["protocols"]["toy"]["max_new_tokens"] == 8
    # Both graders score the same responses; the summary says which one is the headline.
    assert summary["scoring"] == {"grader": "verifier", "require_box": False,
                                  "graders": ["paper", "verifier"]}
    assert row["grader/verifier"] == row["score"] and 0.0 <= row["grader/paper"] <= 1.0
    lines = [json.loads(x) for x in (out / "samples" / "toy.jsonl").read_text().splitlines()]
    assert len(lines) == 3 and {"problem", "response", "extracted", "correct"} <= set(lines[0])
    # The score is the mean verdict of the written samples (greedy, one sample per problem).
    assert row["score"] == pytest.approx(sum(float(x["correct"]) for x in lines) / 3)
    assert (out / "results.md").read_text().count("\n") >= 3
