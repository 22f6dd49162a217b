"""GGUF conversion against independent readers.

* The real SmolLM2-135M-Instruct Q4_1 file: our conversion's logits equal those of transformers'
  own GGUF loader (`from_pretrained(dir, gguf_file=...)`, torch), which maps names, shapes and the
  llama.cpp Q/K row permutation by its own code.
* Every quantisation type the converter reads, on synthetic tensors written into a GGUF: the
  converted weights equal the `gguf` package's reference dequantiser applied to the bytes we
  wrote, and for the fixture's block formats (Q4_0, Q4_1, Q8_0) also a NumPy decoder written here
  from ggml's block layouts.
"""

import gguf
import numpy as np
import pytest
import torch
import transformers

from tests.hf_fixtures import torch_logits
from tests.test_gguf import _GGUF_NAMES, _vocab, _write_gguf

from rlvr_jax import models
from rlvr_jax.models import gguf_import, hf_io

Q = gguf.GGMLQuantizationType


# ----------------------------------------------------------------------- independent block decoders


def _blocks(raw: np.ndarray, qtype) -> np.ndarray:
    """uint8 [rows, bytes] -> uint8 [rows, blocks, block_bytes]."""
    _, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    return raw.reshape(raw.shape[0], -1, block_bytes)


def _half(b: np.ndarray, at: int) -> np.ndarray:
    return b[..., at:at + 2].copy().view(np.float16).astype(np.float32)  # [rows, blocks, 1]


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """ggml packs value j in the low nibble of byte j and value j+16 in its high nibble."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1).astype(np.float32)


def _decode_q4_0(raw):  # block_q4_0 {f16 d; u8 qs[16]}: x = (q - 8) * d
    b = _blocks(raw, Q.Q4_0)
    return ((_nibbles(b[..., 2:]) - 8) * _half(b, 0)).reshape(raw.shape[0], -1)


def _decode_q4_1(raw):  # block_q4_1 {f16 d; f16 m; u8 qs[16]}: x = q * d + m
    b = _blocks(raw, Q.Q4_1)
    return (_nibbles(b[..., 4:]) * _half(b, 0) + _half(b, 2)).reshape(raw.shape[0], -1)


def _decode_q8_0(raw):  # block_q8_0 {f16 d; i8 qs[32]}: x = q * d
    b = _blocks(raw, Q.Q8_0)
    return (b[..., 2:].view(np.int8).astype(np.float32) * _half(b, 0)).reshape(raw.shape[0], -1)


OWN_DECODERS = {Q.Q4_0: _decode_q4_0, Q.Q4_1: _decode_q4_1, Q.Q8_0: _decode_q8_0}

# K-quants have no quantizer in `gguf`; their blocks are random bytes with finite f16 scales at
# these byte offsets (ggml's block_qN_K layouts), so the dequantised values are finite.
K_QUANT_HALF_OFFSETS = {Q.Q2_K: (80, 82), Q.Q3_K: (108,), Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (208,)}
# Types with a `gguf.quants.quantize`: synthetic weights are quantised by the reference itself.
QUANTIZED = (Q.F16, Q.BF16, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0)


def _encode_random_k(qtype, rng):
    def encode(name, arr):
        block_values, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
        raw = rng.integers(0, 256, size=(arr.shape[0], arr.shape[1] // block_values, block_bytes), dtype=np.uint8)
        for at in K_QUANT_HALF_OFFSETS[qtype]:
            halves = rng.uniform(1e-3, 2e-2, size=raw.shape[:2]).astype(np.float16)
            raw[..., at:at + 2] = halves.view(np.uint8).reshape(*raw.shape[:2], 2)
        return raw.reshape(arr.shape[0], -1), qtype
    return encode


@pytest.mark.parametrize("qtype", QUANTIZED + tuple(K_QUANT_HALF_OFFSETS), ids=lambda t: t.name)
def test_converted_weights_equal_reference_dequantization(tmp_path, qtype):
    tokens, _ = _vocab()
    model = _one_layer_qwen2(len(tokens))
    written = {}
    rng = np.random.default_rng(0)
    encode_k = _encode_random_k(qtype, rng) if qtype in K_QUANT_HALF_OFFSETS else None

    def encode(name, arr):
        data, raw_dtype = encode_k(name, arr) if encode_k else (gguf.quants.quantize(arr, qtype), qtype)
        written[name] = (np.asarray(data), arr.shape)
        return data, raw_dtype

    _write_gguf(tmp_path / "q.gguf", model, "qwen2", pre="gpt2", encode=encode)
    got = hf_io.read_safetensors(gguf_import.convert_gguf(tmp_path / "q.gguf", tmp_path / "hf") / "model.safetensors")
    assert len(written) == 9  # embed, lm_head, q/k/v/o, gate/up/down of the one layer
    for hf_name, gname in _hf_names(model).items():
        data, shape = written[gname]
        ref = gguf.quants.dequantize(data, qtype).reshape(shape)
        assert np.isfinite(ref).all()
        np.testing.assert_array_equal(np.asarray(got[hf_name]), ref, err_msg=f"{qtype.name} {hf_name}")
        if qtype in OWN_DECODERS:
            np.testing.assert_array_equal(np.asarray(got[hf_name]), OWN_DECODERS[qtype](data), err_msg=hf_name)


def _one_layer_qwen2(vocab_size):
    """A random one-layer Qwen2 whose matrix rows hold 256 or 512 values (whole blocks of every type)."""
    torch.manual_seed(0)
    config = transformers.Qwen2Config(vocab_size=vocab_size, hidden_size=256, intermediate_size=512,
                                      num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=64, rope_theta=10000.0, rms_norm_eps=1e-6,
                                      tie_word_embeddings=False)
    return transformers.Qwen2ForCausalLM(config).float().eval()


def _hf_names(model) -> dict:
    """HF name -> GGUF name of the model's matrices."""
    out = {}
    for name, t in model.state_dict().items():
        if t.ndim != 2:
            continue
        if name.startswith("model.layers."):
            layer, rest = name.split(".")[2], name.split(".", 3)[3]
            out[name] = f"blk.{layer}." + _GGUF_NAMES[rest]
        else:
            out[name] = _GGUF_NAMES[name]
    return out


def test_own_decoders_agree_with_gguf_on_random_blocks():
    """The NumPy decoders above read the same bytes as gguf's dequantiser (so both references agree)."""
    rng = np.random.default_rng(1)
    for qtype, decode in OWN_DECODERS.items():
        raw = gguf.quants.quantize(rng.normal(size=(3, 64)).astype(np.float32), qtype)
        np.testing.assert_array_equal(decode(raw), gguf.quants.dequantize(raw, qtype))


# ---------------------------------------------------------------- SmolLM2 Q4_1: transformers' reader


def test_smollm2_conversion_matches_transformers_gguf_loader(smollm2_dir):
    src = gguf_import.smollm2_gguf_path()
    reference = transformers.AutoModelForCausalLM.from_pretrained(
        str(src.parent), gguf_file=src.name, dtype=torch.float32).eval()
    cfg, params = models.load_hf(smollm2_dir)
    tok = transformers.AutoTokenizer.from_pretrained(smollm2_dir)
    texts = ["The capital of France is", "Natalia sold 48 clips in April and half as many in May. How many?"]
    enc = [tok.encode(t) for t in texts]
    total = max(map(len, enc))
    ids = np.array([[0] * (total - len(e)) + e for e in enc])
    mask = np.array([[0] * (total - len(e)) + [1] * len(e) for e in enc])
    pos = np.maximum(np.cumsum(mask, -1) - 1, 0)
    ref = torch_logits(reference, ids, mask, pos)
    ours = np.asarray(models.forward(params, cfg, ids, mask))
    m = mask.astype(bool)
    rel = np.max(np.abs(ours[m] - ref[m])) / np.max(np.abs(ref[m]))
    assert rel < 1e-4, rel
