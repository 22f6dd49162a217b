"""Tokenizer loading: HF tokenizer directories, plus a built-in byte-level tokenizer for tiny models.

The byte tokenizer lets tests and `configs/tiny.py` run end to end with no files at all: every UTF-8
byte is one token, and the three ChatML specials are single tokens, so the same chat template and
stop tokens as Qwen work.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys

BYTE_TOKENIZER = "builtin:bytes"
_CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def _transformers():
    """The `transformers` module, imported without its "PyTorch was not found" notice.

    Only its tokenizers and chat templates are used here, which need no torch; the notice would be
    the first line a newcomer's demo run prints. It is an "advisory" warning, which
    `TRANSFORMERS_NO_ADVISORY_WARNINGS` silences: set for this import only.
    """
    if "transformers" in sys.modules:
        return sys.modules["transformers"]
    key = "TRANSFORMERS_NO_ADVISORY_WARNINGS"
    before = os.environ.get(key)
    os.environ[key] = "1"
    try:
        import transformers
    finally:
        if before is None:
            del os.environ[key]
        else:
            os.environ[key] = before
    return transformers


def byte_tokenizer():
    """A `PreTrainedTokenizerFast` over raw bytes (ids 0-255) plus ChatML specials (256-258)."""
    transformers = _transformers()
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    # ByteLevel maps bytes to printable unicode stand-ins; a BPE with no merges is then one token per byte.
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    byte_to_char = _bytes_to_unicode()
    vocab = {byte_to_char[b]: b for b in range(256)}
    assert set(vocab) == set(alphabet)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(_SPECIALS))
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=_CHATML,
    )


def load_tokenizer(path: str | pathlib.Path):
    """Loads an HF tokenizer directory, or the byte tokenizer for `"builtin:bytes"`."""
    if str(path) == BYTE_TOKENIZER:
        return byte_tokenizer()
    transformers = _transformers()

    path = pathlib.Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"tokenizer directory not found: {path}")
    return transformers.AutoTokenizer.from_pretrained(str(path))


# Which tokens end a response (`config.rollout.stop`, `EvalSettings.stop`):
#   "eos"       the model's end-of-sequence ids only: the tokenizer's eos plus generation_config.json's
#               eos_token_id, which is what vLLM stops at by default (the paper's verl rollouts). For
#               base Qwen2.5-Math that is `<|endoftext|>` alone: an `<|im_end|>` it writes is trained on
#               like any other token and generation runs on to `<|endoftext|>`.
#   "eos+chat"  also the chat specials that close a turn (`<|im_end|>`, `<|eot_id|>`, ...), as the
#               Qwen2.5-Math evaluation suite stops (its stop words and stop_token_ids [151645, 151643]).
STOP_MODES = ("eos", "eos+chat")
_CHAT_END_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>")


def stop_token_ids(tokenizer, mode: str = "eos+chat",
                   model_dir: str | pathlib.Path | None = None) -> tuple[int, ...]:
    """Token ids that end a response (see `STOP_MODES`); the stop token is kept in the response and
    in its loss mask, as verl's response mask runs to and includes the EOS.

    Args:
      tokenizer: A transformers tokenizer.
      mode: "eos" (the model's EOS ids only) or "eos+chat" (plus chat end-of-turn tokens).
      model_dir: The model's HF directory, whose generation_config.json eos ids count as EOS
        (None: look next to the tokenizer, `tokenizer.name_or_path`).

    Raises:
      ValueError: unknown mode, or "eos" with no EOS id anywhere (a run would never stop early).
    """
    if mode not in STOP_MODES:
        raise ValueError(f"unknown stop mode {mode!r}; known: {', '.join(STOP_MODES)}")
    ids = set(model_eos_ids(tokenizer, model_dir))
    if mode == "eos+chat":
        vocab = tokenizer.get_vocab()
        ids.update(int(vocab[t]) for t in _CHAT_END_TOKENS if t in vocab)
    if not ids:
        raise ValueError("the tokenizer and generation_config.json name no EOS token; "
                         "set rollout.stop='eos+chat' or give the tokenizer an eos_token")
    return tuple(sorted(ids))


def model_eos_ids(tokenizer, model_dir: str | pathlib.Path | None = None) -> tuple[int, ...]:
    """The tokenizer's eos id plus the eos_token_id (an int or a list) of generation_config.json."""
    ids = set() if tokenizer.eos_token_id is None else {int(tokenizer.eos_token_id)}
    folder = model_dir if model_dir is not None else getattr(tokenizer, "name_or_path", "")
    path = pathlib.Path(folder or ".") / "generation_config.json"
    if folder and path.is_file():
        eos = json.loads(path.read_text(encoding="utf-8")).get("eos_token_id")
        ids.update(int(e) for e in (eos if isinstance(eos, list) else [] if eos is None else [eos]))
    return tuple(sorted(ids))


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (the ByteLevel alphabet)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1)
    )
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table
