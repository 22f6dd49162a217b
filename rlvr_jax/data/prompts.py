"""Prompt templates, registered by name.

* ``qwen_math_cot`` -- the paper's evaluation prompt (the Qwen2.5-Math evaluation suite's
  ``qwen25-math-cot``): a fixed ChatML string, so evaluation does not depend on which tokenizer
  files happen to ship a chat template.
* ``llama`` -- the evaluation suite's ``llama`` prompt for Llama-3.2-3B-Instruct (a fixed Llama-3
  header with the suite's own dates, no instruction text), as the paper's evaluation fork used it.
* ``deepseek_distill`` -- the suite's ``deepseek-distill`` prompt for DeepSeek-R1-Distill models:
  the user turn, then the assistant turn opened with ``<think>\n``.
* ``chat_template`` -- the tokenizer's own ``apply_chat_template`` (Llama-3 instruct, and training:
  the paper's verl run applies the chat template to the parquet's user message, which adds the
  tokenizer's default system message).
* ``plain`` -- the question alone (base-model completion, debugging).

New templates: decorate a ``fn(example, tokenizer, system) -> str`` with `register_template`.
"""

from __future__ import annotations

from typing import Any, Callable

from rlvr_jax.data.datasets import Example

TemplateFn = Callable[[Example, Any, "str | None"], str]

_TEMPLATES: dict[str, TemplateFn] = {}

QWEN_MATH_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."


def register_template(name: str) -> Callable[[TemplateFn], TemplateFn]:
    """Decorator registering ``fn(example, tokenizer, system) -> prompt`` under ``name``."""

    def wrap(fn: TemplateFn) -> TemplateFn:
        if name in _TEMPLATES:
            raise ValueError(f"prompt template {name!r} is already registered")
        _TEMPLATES[name] = fn
        return fn

    return wrap


def template_names() -> list[str]:
    """Names of the registered templates."""
    return sorted(_TEMPLATES)


def build_prompt(example: Example, template: str, tokenizer: Any = None,
                 system: str | None = None) -> str:
    """Renders the prompt text for one example.

    Args:
      example: The example; chat templates use its `messages` when it has them.
      template: A registered template name (see `template_names`).
      tokenizer: A transformers tokenizer; needed by ``chat_template`` only.
      system: System message. None keeps the template's default (for ``chat_template``: the
        tokenizer's own default system message, if its template has one).

    Returns:
      The prompt string, ending where the model's response starts.

    Raises:
      ValueError: unknown template name, or a template that needs a tokenizer got none.
    """
    try:
        fn = _TEMPLATES[template]
    except KeyError:
        raise ValueError(f"unknown prompt template {template!r}; "
                         f"registered: {', '.join(template_names())}") from None
    return fn(example, tokenizer, system)


@register_template("qwen_math_cot")
def _qwen_math_cot(example: Example, tokenizer: Any, system: str | None) -> str:
    del tokenizer  # A fixed string: identical prompts whatever tokenizer files are at hand.
    system = QWEN_MATH_SYSTEM if system is None else system
    return (f"<|im_start|>system\n{system}<|im_end|>\n"
            f"<|im_start|>user\n{example.question}<|im_end|>\n"
            "<|im_start|>assistant\n")


# The suite's `llama` prompt, character for character (including the space before the first
# <|eot_id|> and its "Today Date"); the question is the problem text alone.
LLAMA_EVAL_PROMPT = (
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
    "Cutting Knowledge Date: December 2023\nToday Date: 17 Apr 2025\n\n"
    " <|eot_id|><|start_header_id|>user<|end_header_id|>\n\n{question}<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n")
# The suite's `deepseek-distill` prompt (full-width bars and the U+2581 block in the specials).
DEEPSEEK_DISTILL_PROMPT = (
    "<\uff5cbegin\u2581of\u2581sentence\uff5c><\uff5cUser\uff5c>{question}"
    "<\uff5cAssistant\uff5c><think>\n")


def _fixed(name: str, text: str) -> TemplateFn:
    def render(example: Example, tokenizer: Any, system: str | None) -> str:
        del tokenizer  # a fixed string, as the suite renders it
        if system is not None:
            raise ValueError(f"prompt template {name!r} is a fixed string and takes no system "
                             "message (set the system prompt to empty)")
        return text.format(question=example.question)

    return render


register_template("llama")(_fixed("llama", LLAMA_EVAL_PROMPT))
register_template("deepseek_distill")(_fixed("deepseek_distill", DEEPSEEK_DISTILL_PROMPT))


@register_template("chat_template")
def _chat_template(example: Example, tokenizer: Any, system: str | None) -> str:
    if tokenizer is None:
        raise ValueError("prompt template 'chat_template' needs a tokenizer")
    messages = example.chat_messages()
    if system is not None:
        # An explicit system message replaces one the source may carry: two would be ambiguous.
        messages = [{"role": "system", "content": system}] + [
            m for m in messages if m["role"] != "system"]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if not isinstance(prompt, str):
        raise TypeError(f"apply_chat_template returned {type(prompt).__name__}, expected str")
    return prompt


@register_template("plain")
def _plain(example: Example, tokenizer: Any, system: str | None) -> str:
    del tokenizer
    if system is not None:
        raise ValueError("prompt template 'plain' takes no system message")
    return example.question
