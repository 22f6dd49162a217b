"""Data layer: dataset loading, prompt templates, batching, example selection."""

import json

import numpy as np
import pytest

from rlvr_jax.data import (DatasetError, Example, PromptIterator, build_prompt,
                           load_accuracy_history, load_dataset, rank_by_variance, repeat_to_fill,
                           template_names, tokenize_prompts, variance_ranking)

QWEN_COT = ("<|im_start|>system\nPlease reason step by step, and put your final answer within "
            "\\boxed{}.<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n"
            "<|im_start|>assistant\n")


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _examples(n):
    return [Example(question=f"q{i}", answer=str(i), index=i, source="toy") for i in range(n)]


@pytest.fixture(scope="module")
def qwen_tokenizer(shared_dir):
    import transformers

    path = shared_dir / "tokenizers" / "qwen2"
    if not path.is_dir():
        pytest.skip(f"{path} not found")
    return transformers.AutoTokenizer.from_pretrained(str(path))


# ----------------------------------------------------------------------------- datasets


def test_pi1_parquet(shared_dir):
    examples = load_dataset(shared_dir / "data/train/pi1_r128.parquet")
    assert len(examples) == 128
    assert len(set(examples)) == 1  # One example, repeated: frozen Examples hash and compare.
    ex = examples[0]
    assert ex.answer == "12.8"
    assert ex.index == 124 and ex.source == "deepscaler"
    assert ex.question.startswith("The pressure \\( P \\) exerted by wind")
    assert ex.question.endswith("output the final answer within \\boxed{}.")
    assert ex.messages == (("user", ex.question),)
    assert ex.chat_messages() == [{"role": "user", "content": ex.question}]


def test_dsr_sub_parquet(shared_dir):
    examples = load_dataset(shared_dir / "data/train/dsr_sub.parquet")
    assert len(examples) == 1209
    assert [e.index for e in examples] == list(range(1209))
    assert examples[124].answer == "12.8" and examples[267].answer == "24"
    assert examples[682].answer == "\\frac{4}{3}"
    assert examples[789].answer == "-\\frac{2023}{2024}"
    assert examples[19].answer == "\\frac{40}{9}"  # Stored as "$\frac{40}{9}$".
    assert examples[473].answer == "\\$65"  # An escaped dollar is a dollar sign: kept.
    assert examples[265].answer == ""  # The source's one empty ground truth is kept ...
    with pytest.raises(DatasetError, match=r"dsr_sub.parquet: row 265: empty answer"):
        load_dataset(shared_dir / "data/train/dsr_sub.parquet", allow_empty_answer=False)


def test_verl_math500_parquet(shared_dir):
    examples = load_dataset(shared_dir / "data/eval/math500/verl_math500.parquet")
    assert len(examples) == 500
    assert examples[0].answer == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert examples[0].source == "simplerl/math500"


def test_jsonl_variants(tmp_path):
    path = _write_jsonl(tmp_path / "mix.jsonl", [
        {"prompt": "p0", "answer": "a0"},
        {"question": "q1", "ground_truth": "g1"},
        {"problem": "q2", "final_answer": ["$\\frac{1}{2}$"]},
        {"problem": "q3", "answer": 27.0},
        {"problem": "q4", "answer": 12.5},
        {"problem": "q5", "answer": 7},
        {"problem": "q6", "final_answer": ["1", "3"]},
        {"problem": "q7", "solution": "so x = \\boxed{5}", "answer": " 5 "},
        {"prompt": [{"role": "system", "content": "S"}, {"role": "user", "content": "q8"}],
         "reward_model": {"ground_truth": "g8", "style": "rule"}, "data_source": "src",
         "extra_info": {"index": 42}},
    ])
    path.write_text(path.read_text() + "\n\n")  # Trailing blank lines are not rows.
    ex = load_dataset(path)
    assert [e.question for e in ex] == [f"{c}{i}" for i, c in enumerate("pqqqqqqqq")]
    assert [e.answer for e in ex] == ["a0", "g1", "\\frac{1}{2}", "27", "12.5", "7", "1, 3", "5",
                                      "g8"]
    assert [e.index for e in ex] == [0, 1, 2, 3, 4, 5, 6, 7, 42]
    assert ex[0].source == "mix" and ex[8].source == "src"
    assert ex[0].messages is None
    assert ex[8].messages == (("system", "S"), ("user", "q8"))


def test_explicit_keys_json_and_limit(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text(json.dumps([{"text": "q0", "label": "1", "answer": "x"},
                                {"text": "q1", "label": "2", "answer": "y"}]))
    ex = load_dataset(path, question_key="text", answer_key="label", source="mine", limit=1)
    assert ex == [Example(question="q0", answer="1", messages=None, index=0, source="mine")]


@pytest.mark.parametrize("row, message", [
    ({"problem": "q"}, r"row 1 \(line 2\): missing answer field"),
    ({"answer": "a"}, r"row 1 \(line 2\): missing question field"),
    ({"problem": 3, "answer": "a"}, r"row 1 \(line 2\): question field 'problem' must be"),
    ({"problem": "q", "answer": {"x": 1}}, r"row 1 \(line 2\): answer field 'answer' must be"),
    ({"problem": "q", "answer": True}, r"row 1 \(line 2\): answer field 'answer' is a boolean"),
    ({"problem": "  ", "answer": "a"}, r"row 1 \(line 2\): empty question"),
    ({"prompt": [{"role": "user"}], "answer": "a"}, r"row 1 \(line 2\): prompt\[0\] needs"),
    ({"prompt": [{"role": "system", "content": "s"}], "answer": "a"}, "no user message"),
    ({"problem": "q", "answer": []}, "empty list"),
    (["not", "an", "object"], r"row 1 \(line 2\): expected an object"),
])
def test_malformed_rows_name_file_and_row(tmp_path, row, message):
    path = _write_jsonl(tmp_path / "bad.jsonl", [{"problem": "ok", "answer": "1"}, row])
    with pytest.raises(DatasetError, match=message) as info:
        load_dataset(path)
    assert str(path) in str(info.value)


def test_bad_files(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        load_dataset(tmp_path / "absent.jsonl")
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(DatasetError, match="unknown dataset extension '.csv'"):
        load_dataset(tmp_path / "data.csv")
    (tmp_path / "broken.jsonl").write_text('{"problem": "q", "answer": "1"}\n\n{oops\n')
    with pytest.raises(DatasetError, match=r"broken.jsonl: row 1 \(line 3\): invalid JSON"):
        load_dataset(tmp_path / "broken.jsonl")
    (tmp_path / "obj.json").write_text('{"problem": "q"}')
    with pytest.raises(DatasetError, match="must hold a list of rows"):
        load_dataset(tmp_path / "obj.json")


def test_answer_from_solution(tmp_path):
    path = _write_jsonl(tmp_path / "sol.jsonl", [
        {"problem": "q", "solution": "We get \\boxed{1}. Wait, that is wrong: recomputing, "
                                     "the answer is $\\boxed{\\frac{a}{b}}$."}])
    assert load_dataset(path)[0].answer == "\\frac{a}{b}"  # Auto: the last \boxed{}.
    assert load_dataset(path, answer_from_solution=True)[0].answer == "\\frac{a}{b}"
    _write_jsonl(path, [{"problem": "q", "solution": "no box here"}])
    with pytest.raises(DatasetError, match=r"row 0 \(line 1\): no \\boxed"):
        load_dataset(path)


# ----------------------------------------------------------------------------- prompts


def test_qwen_math_cot_and_plain():
    ex = Example(question="What is $1+1$?", answer="2")
    assert build_prompt(ex, "qwen_math_cot") == QWEN_COT.replace("{question}", ex.question)
    assert build_prompt(ex, "plain") == "What is $1+1$?"
    assert {"qwen_math_cot", "chat_template", "plain"} <= set(template_names())
    with pytest.raises(ValueError, match="unknown prompt template 'nope'"):
        build_prompt(ex, "nope")
    with pytest.raises(ValueError, match="needs a tokenizer"):
        build_prompt(ex, "chat_template")


def test_chat_template_with_qwen_tokenizer(shared_dir, qwen_tokenizer):
    ex = load_dataset(shared_dir / "data/train/pi1_r128.parquet", limit=1)[0]
    default = build_prompt(ex, "chat_template", qwen_tokenizer)
    # The training prompt of the paper's verl run: Qwen's default system message + user turn.
    assert default == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                       f"<|im_start|>user\n{ex.question}<|im_end|>\n<|im_start|>assistant\n")
    custom = build_prompt(ex, "chat_template", qwen_tokenizer, system="Be brief.")
    assert custom.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n")
    cot = build_prompt(Example(ex.question, ex.answer), "chat_template", qwen_tokenizer,
                       system="Please reason step by step, and put your final answer within "
                              "\\boxed{}.")
    assert cot == build_prompt(ex, "qwen_math_cot")  # Same ChatML when the system matches.


# ----------------------------------------------------------------------------- batching


def test_repeat_to_fill():
    pi1, pi13 = _examples(2)
    assert repeat_to_fill([pi1], 128) == [pi1] * 128
    two = repeat_to_fill([pi1, pi13], 128)
    assert two[:4] == [pi1, pi13, pi1, pi13] and two.count(pi1) == 64
    with pytest.raises(ValueError, match="multiple"):
        repeat_to_fill([pi1, pi13], 127)
    with pytest.raises(ValueError, match="at least one"):
        repeat_to_fill([], 8)


def test_prompt_iterator_is_deterministic_per_epoch():
    data = _examples(12)
    a, b = PromptIterator(data, 4, seed=7), PromptIterator(data, 4, seed=7)
    batches = [next(a) for _ in range(7)]
    assert [x.examples for x in batches] == [next(b).examples for _ in range(7)]
    assert a.steps_per_epoch == 3
    assert [x.epoch for x in batches] == [0, 0, 0, 1, 1, 1, 2]
    for epoch in (0, 1):  # Each epoch visits every example once.
        seen = [e.index for x in batches[3 * epoch:3 * epoch + 3] for e in x.examples]
        assert sorted(seen) == list(range(12))
    order0 = np.random.default_rng([7, 0]).permutation(12)  # Depends only on (seed, epoch).
    assert [e.index for e in batches[1].examples] == list(order0[4:8])
    assert batches[0].examples != batches[3].examples  # Reshuffled each epoch.
    assert PromptIterator(data, 4, seed=8).batch_at(0).examples != batches[0].examples
    np.testing.assert_array_equal(batches[5].group_ids_b, np.arange(4))
    assert a.batch_at(4).examples == batches[4].examples and a.step == 7  # batch_at is pure.
    unshuffled = PromptIterator(data, 4, shuffle=False)
    assert [e.index for e in unshuffled.batch_at(4).examples] == [4, 5, 6, 7]


def test_prompt_iterator_drops_partial_batch_and_checks_size():
    it = PromptIterator(_examples(10), 4, seed=0)
    assert it.steps_per_epoch == 2 and it.batch_at(2).epoch == 1
    with pytest.raises(ValueError, match="repeat_to_fill"):
        PromptIterator(_examples(1), 128)


def test_prompt_iterator_state_restore():
    data = _examples(12)
    run = PromptIterator(data, 4, seed=3)
    for _ in range(5):
        next(run)
    state = json.loads(json.dumps(run.state()))  # Survives a JSON round trip (checkpoints).
    expected = [next(run).examples for _ in range(4)]
    resumed = PromptIterator(data, 4, seed=3)
    resumed.restore(state)
    assert resumed.step == 5 and [next(resumed).examples for _ in range(4)] == expected
    for key, value in (("seed", 4), ("batch_size", 6), ("num_examples", 11)):
        with pytest.raises(ValueError, match=f"saved with {key}"):
            resumed.restore({**state, key: value})


def test_prompt_iterator_sharding():
    data = _examples(32)
    whole = PromptIterator(data, 8, seed=1)
    whole.restore({"step": 2})
    hosts = [whole.shard(p, 2) for p in range(2)]
    for _ in range(6):  # Crosses epoch boundaries (4 steps per epoch).
        full = next(whole)
        parts = [next(h) for h in hosts]
        assert parts[0].examples + parts[1].examples == full.examples
        np.testing.assert_array_equal(parts[1].group_ids_b, np.arange(4, 8))  # Global row ids.
        assert parts[0].step == full.step and len(parts[0]) == 4
    assert hosts[1].state() == whole.state()
    with pytest.raises(ValueError, match="split evenly"):
        whole.shard(0, 3)
    with pytest.raises(ValueError, match="process_index"):
        whole.shard(2, 2)


class _CharTokenizer:
    """One token per character: tokenisation logic without tokenizer files."""

    def __call__(self, texts, add_special_tokens=True):
        prefix = [0] if add_special_tokens else []
        return {"input_ids": [prefix + [ord(ch) for ch in t] for t in texts]}


def test_tokenize_prompts_truncation():
    tok = _CharTokenizer()
    assert tokenize_prompts(tok, ["ab", "abc"], 3) == [[97, 98], [97, 98, 99]]
    with pytest.raises(ValueError, match=r"prompt 1 has 4 tokens > max_prompt_len=3"):
        tokenize_prompts(tok, ["ab", "abcd"], 3)
    assert tokenize_prompts(tok, ["abcd"], 3, truncation="left") == [[98, 99, 100]]
    assert tokenize_prompts(tok, ["a"], 3, add_special_tokens=True) == [[0, 97]]
    with pytest.raises(ValueError, match="truncation"):
        tokenize_prompts(tok, ["a"], 3, truncation="right")
    assert tokenize_prompts(tok, [], 3) == []


def test_tokenize_prompts_with_qwen_tokenizer(qwen_tokenizer):
    prompt = build_prompt(Example("What is 1+1?", "2"), "qwen_math_cot")
    (ids,) = tokenize_prompts(qwen_tokenizer, [prompt], 64)
    # ChatML markers are single special tokens, and no BOS is prepended.
    assert ids[0] == qwen_tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert ids.count(qwen_tokenizer.convert_tokens_to_ids("<|im_end|>")) == 2
    assert qwen_tokenizer.decode(ids) == prompt
    (tail,) = tokenize_prompts(qwen_tokenizer, [prompt], 8, truncation="left")
    assert tail == ids[-8:]
    with pytest.raises(ValueError, match=f"prompt 0 has {len(ids)} tokens"):
        tokenize_prompts(qwen_tokenizer, [prompt], 8)


# ----------------------------------------------------------------------------- selection


def test_variance_ranking_matches_paper(shared_dir):
    history = load_accuracy_history(shared_dir / "data/train/acc_step_500.json")
    assert len(history) == 1209
    order = rank_by_variance(history)
    # pi_i is the i-th largest variance: pi1 = DSR index 124, pi2 = 267, pi13 = 682, and
    # pi1209 = 789 is last (a zero-variance example; ties keep the file order).
    assert order[0] == 124 and order[1] == 267 and order[12] == 682 and order[-1] == 789
    ranking = variance_ranking(history)
    assert ranking[0][1] == pytest.approx(np.var(history[124]))
    assert all(a[1] >= b[1] for a, b in zip(ranking, ranking[1:]))


def test_variance_ranking_ties_and_errors(tmp_path):
    assert rank_by_variance({5: [0, 0], 3: [0, 1], 9: [1, 1], 1: [1, 0]}) == [3, 1, 5, 9]
    path = tmp_path / "acc.json"
    path.write_text(json.dumps({"0": [0.5, "x"]}))
    with pytest.raises(ValueError, match="example 0"):
        load_accuracy_history(path)
    with pytest.raises(FileNotFoundError):
        load_accuracy_history(tmp_path / "absent.json")


def test_rank_examples_cli(shared_dir, capsys):
    import importlib.util
    import pathlib

    script = pathlib.Path(__file__).resolve().parents[1] / "launch" / "rank_examples.py"
    spec = importlib.util.spec_from_file_location("rank_examples", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main([f"--acc={shared_dir / 'data/train/acc_step_500.json'}", "--top=3",
                        f"--dataset={shared_dir / 'data/train/dsr_sub.parquet'}"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and lines[0].split()[:3] == ["rank", "index", "variance"]
    assert lines[1].split()[:2] == ["1", "124"] and "12.8 | The pressure" in lines[1]
    assert lines[2].split()[:2] == ["2", "267"]
