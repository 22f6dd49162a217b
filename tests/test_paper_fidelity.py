"""Paper fidelity (docs/paper_fidelity.md): stop tokens, prompts and evaluation protocols per recipe.

Stop tokens are checked on the real Qwen2 tokenizer files in `../shared/tokenizers/qwen2`; prompt
texts against the Qwen2.5-Math evaluation suite's PROMPT_TEMPLATES (One-Shot-RLVR's fork,
`Qwen2.5-Eval/evaluation/utils.py`), transcribed here independently of rlvr_jax.data.prompts.
"""

import dataclasses
import json
import shutil

import numpy as np
import pytest

from configs import llama32_3b_1shot, qwen7b_1shot, qwen15b_1shot, r1_distill_qwen15b_1shot
from rlvr_jax import experiment as eval_launch
from rlvr_jax.experiment import validation as config_check
from rlvr_jax.data import build_prompt
from rlvr_jax.data.datasets import Example
from rlvr_jax.data.tokenizers import load_tokenizer, model_eos_ids, stop_token_ids
from rlvr_jax.evaluation import EvalSettings, get_benchmark, make_validation_fn
from rlvr_jax.evaluation.runner import resolve_protocol

ENDOFTEXT, IM_END = 151643, 151645

# The suite's prompts, with {input} where the question goes.
SUITE_LLAMA = (
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: "
    "December 2023\nToday Date: 17 Apr 2025\n\n <|eot_id|><|start_header_id|>user<|end_header_id|>"
    "\n\n{input}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
SUITE_DEEPSEEK_DISTILL = "<｜begin▁of▁sentence｜><｜User｜>{input}<｜Assistant｜><think>\n"
SUITE_QWEN25_MATH_COT = (
    "<|im_start|>system\nPlease reason step by step, and put your final answer within \\boxed{}."
    "<|im_end|>\n<|im_start|>user\n{input}<|im_end|>\n<|im_start|>assistant\n")
QUESTION = "What is {x} if 2x = 6? Let's think step by step."


@pytest.fixture(scope="module")
def qwen_dir(shared_dir):
    return shared_dir / "tokenizers" / "qwen2"


@pytest.fixture
def base_qwen_dir(qwen_dir, tmp_path):
    """The Qwen2 tokenizer files as a base Qwen2.5-Math checkpoint ships them: eos <|endoftext|>
    in both the tokenizer config and generation_config.json."""
    out = tmp_path / "base_qwen"
    shutil.copytree(qwen_dir, out)
    cfg = json.loads((out / "tokenizer_config.json").read_text())
    cfg["eos_token"] = "<|endoftext|>"
    (out / "tokenizer_config.json").write_text(json.dumps(cfg))
    (out / "generation_config.json").write_text(json.dumps({"eos_token_id": ENDOFTEXT}))
    return out


def test_base_qwen_stops_at_endoftext_only(base_qwen_dir):
    tok = load_tokenizer(base_qwen_dir)
    assert stop_token_ids(tok, "eos") == (ENDOFTEXT,)
    assert stop_token_ids(tok, "eos+chat") == (ENDOFTEXT, IM_END)
    assert stop_token_ids(tok) == (ENDOFTEXT, IM_END)  # the default is unchanged


def test_eos_comes_from_generation_config_too(qwen_dir, tmp_path):
    tok = load_tokenizer(qwen_dir)  # eos_token <|im_end|>; generation_config eos [151645, 151643]
    assert tok.eos_token_id == IM_END
    assert model_eos_ids(tok) == (ENDOFTEXT, IM_END)
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": ENDOFTEXT}))
    assert stop_token_ids(tok, "eos", model_dir=tmp_path) == (ENDOFTEXT, IM_END)
    (tmp_path / "generation_config.json").write_text(json.dumps({}))
    assert stop_token_ids(tok, "eos", model_dir=tmp_path) == (IM_END,)
    with pytest.raises(ValueError, match="stop mode"):
        stop_token_ids(tok, "chat")


def test_loss_mask_runs_through_the_eos(base_qwen_dir):
    """The stop token is the response's last token and is inside its mask (verl's response mask)."""
    from rlvr_jax.training.rollout_batch import make_rollout_batch

    tok = load_tokenizer(base_qwen_dir)
    stops = stop_token_ids(tok, "eos")
    text = tok.encode("x<|im_end|>\n<|im_start|>user", add_special_tokens=False)
    response = text + [stops[0]]  # <|im_end|> is an ordinary token under "eos"
    assert IM_END in response[:-1] and IM_END not in stops
    ids = np.array([response + [0, 0]])
    mask = np.array([[1] * len(response) + [0, 0]])
    result = type("R", (), dict(prompt_ids=np.array([[5]]), prompt_mask=np.array([[1]]),
                                response_ids=ids, response_mask=mask,
                                logprob_array=np.zeros(ids.shape)))
    batch = make_rollout_batch(result)
    last = int(batch.response_mask.sum()) - 1
    assert batch.input_ids[0, 1 + last] == ENDOFTEXT and batch.response_mask[0, last] == 1


def test_recipes_stop_at_the_models_eos_and_validate_like_the_reward():
    for module in (qwen15b_1shot, qwen7b_1shot, llama32_3b_1shot, r1_distill_qwen15b_1shot):
        c = module.get_config()
        config_check.validate(c, need_weights=False)
        assert c.rollout.stop == "eos"
        assert c.eval.require_box is True
        assert c.eval.stop == "eos+chat"


def test_suite_prompts_are_rendered_exactly():
    example = Example(question=QUESTION, answer="3")
    assert build_prompt(example, "llama") == SUITE_LLAMA.replace("{input}", QUESTION)
    assert build_prompt(example, "deepseek_distill") == SUITE_DEEPSEEK_DISTILL.replace(
        "{input}", QUESTION)
    assert build_prompt(example, "qwen_math_cot") == SUITE_QWEN25_MATH_COT.replace(
        "{input}", QUESTION)
    with pytest.raises(ValueError, match="no system"):
        build_prompt(example, "llama", system="Be brief.")


def test_llama_recipe_trains_on_the_chat_template_with_the_user_message_only(qwen_dir):
    c = llama32_3b_1shot.get_config()
    assert c.data.template == "chat_template" and c.data.system_prompt == ""
    assert c.eval.template == "llama"
    settings = eval_launch.eval_settings(c)
    assert settings.system is None  # the suite's fixed prompt, no Qwen system message
    # Empty system prompt -> the template's own default system turn, not the Qwen instruction.
    tok = load_tokenizer(qwen_dir)
    example = Example(question=QUESTION, answer="3", messages=(("user", QUESTION),))
    prompt = build_prompt(example, c.data.template, tok, c.data.system_prompt or None)
    assert prompt == tok.apply_chat_template([{"role": "user", "content": QUESTION}],
                                             tokenize=False, add_generation_prompt=True)
    assert "Please reason step by step" not in prompt


@pytest.mark.parametrize("name", ["math500", "minerva_math", "aime24", "amc23"])
def test_r1_distill_recipe_evaluates_with_the_papers_protocol(name):
    c = r1_distill_qwen15b_1shot.get_config()
    settings = dataclasses.replace(eval_launch.eval_settings(c), greedy=None)
    b = resolve_protocol(get_benchmark(name), settings)
    assert (b.template, b.temperature, b.top_p, b.n, b.max_new_tokens) == (
        "deepseek_distill", 0.6, 0.95, 16, 8192)
    assert b.metric == "avg@16"
    # The in-training validation (config.eval.greedy False) uses the same protocol.
    assert resolve_protocol(get_benchmark(name), eval_launch.eval_settings(c)) == b


def test_qwen_recipe_keeps_the_papers_qwen_protocol():
    c = qwen15b_1shot.get_config()
    settings = dataclasses.replace(eval_launch.eval_settings(c), greedy=None)
    aime = resolve_protocol(get_benchmark("aime24"), settings)
    assert (aime.template, aime.temperature, aime.top_p, aime.n) == ("qwen_math_cot", 0.6, 1.0, 8)
    assert resolve_protocol(get_benchmark("math500"), settings).greedy


def test_eval_settings_any_k_top_p_and_validation():
    s = EvalSettings(n=5, temperature=0.7, top_p=0.9, max_new_tokens=32768)
    b = resolve_protocol(get_benchmark("aime25"), s)
    assert (b.n, b.temperature, b.top_p, b.max_new_tokens, b.metric) == (5, 0.7, 0.9, 32768, "avg@5")
    assert not resolve_protocol(get_benchmark("math500"), s).greedy  # a temperature samples all
    assert resolve_protocol(get_benchmark("math500"), dataclasses.replace(s, greedy=True)).greedy
    # Without a temperature, n and top_p change sampled sets only: greedy ones stay greedy.
    assert resolve_protocol(get_benchmark("math500"), EvalSettings(n=5, top_p=0.9)).greedy
    for bad in (dict(top_p=0.0), dict(top_p=1.5), dict(temperature=0.0), dict(stop="chat")):
        with pytest.raises(ValueError):
            EvalSettings(**bad)


def test_validation_says_which_scoring_it_used(tmp_path):
    from rlvr_jax.data.tokenizers import BYTE_TOKENIZER

    path = tmp_path / "toy.jsonl"
    path.write_text(json.dumps({"problem": "Q: 1+1?", "answer": "2"}) + "\n")
    tok = load_tokenizer(BYTE_TOKENIZER)

    def fake_generate(params, cfg, prompts, *, n, **kw):
        tokens = [tok.encode("The answer is 2.", add_special_tokens=False)] * (len(prompts) * n)
        return type("R", (), dict(tokens=tokens, finish_reason=["stop"] * len(tokens)))

    from rlvr_jax.rewards import compute_score
    for require_box, accuracy in ((True, 0.0), (False, 1.0)):
        scorer = lambda rs, gs, rb=require_box: np.array(  # noqa: E731
            [compute_score(r, g, require_box=rb) for r, g in zip(rs, gs)])
        validate = make_validation_fn(tok, [str(path)], data_dir=None, scorer=scorer,
                                      settings=EvalSettings(progress=False), cfg=None,
                                      generate_fn=fake_generate, require_box=require_box)
        metrics = validate(None, 0)
        assert metrics["eval/require_box"] == float(require_box)
        assert metrics["eval/toy/accuracy"] == accuracy
