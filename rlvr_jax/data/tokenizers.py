"""Tokenizer loading: HF tokenizer directories, plus a built-in byte-level tokenizer for tiny models.

The byte tokenizer lets tests and `configs/tiny.py` run end to end with no files at all: every UTF-8
byte is one token, and the three ChatML specials are single tokens, so the same chat template and
stop tokens as Qwen work.
"""

from __future__ import annotations

import pathlib

BYTE_TOKENIZER = "builtin:bytes"
_CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def byte_tokenizer():
    """A `PreTrainedTokenizerFast` over raw bytes (ids 0-255) plus ChatML specials (256-258)."""
    import transformers
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
    import transformers

    path = pathlib.Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"tokenizer directory not found: {path}")
    return transformers.AutoTokenizer.from_pretrained(str(path))


def stop_token_ids(tokenizer) -> tuple[int, ...]:
    """Token ids that end a response: EOS plus the chat specials that mark the end of a turn."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    vocab = tokenizer.get_vocab()
    for special in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>"):
        if special in vocab:
            ids.add(int(vocab[special]))
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
