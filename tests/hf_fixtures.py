"""Tiny random HF models (Qwen2, Qwen3 and Llama 3) saved to disk, the torch reference for parity tests."""

import numpy as np
import torch
import transformers

TINY = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6)


def make_hf_model(kind: str, path, *, tie: bool = False, seed: int = 0, **overrides):
    """Builds a random tiny `kind` ("qwen2", "qwen3" or "llama3") model, saves it to `path`, returns it (eval mode).

    `overrides` replace fields of `TINY` (e.g. `vocab_size=128` so the vocab splits on a mesh).
    """
    torch.manual_seed(seed)
    tiny = dict(TINY, **overrides)
    if kind == "qwen2":
        config = transformers.Qwen2Config(**tiny, tie_word_embeddings=tie, rope_theta=10000.0)
        model = transformers.Qwen2ForCausalLM(config)
    elif kind == "qwen3":
        # head_dim 24 != hidden / heads = 16: Qwen3 sets head_dim explicitly (128 in every released size).
        tiny.setdefault("head_dim", 24)
        config = transformers.Qwen3Config(**tiny, tie_word_embeddings=tie, rope_theta=1000000.0)
        model = transformers.Qwen3ForCausalLM(config)
    elif kind == "llama3":
        config = transformers.LlamaConfig(
            **tiny, tie_word_embeddings=tie, rope_theta=500000.0,
            rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                          "high_freq_factor": 4.0, "original_max_position_embeddings": 32})
        model = transformers.LlamaForCausalLM(config)
    else:
        raise ValueError(kind)
    # Random biases too (HF initialises them to zero, which would hide bias-loading bugs).
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    model = model.float().eval()
    model.save_pretrained(path)
    return model


def left_padded_batch(vocab: int, lengths, total: int, seed: int = 0):
    """Random token ids `[b, total]` left-padded to `total` with mask, and HF position ids."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, size=(len(lengths), total)).astype(np.int64)
    mask = np.zeros_like(ids)
    for i, n in enumerate(lengths):
        mask[i, total - n:] = 1
        ids[i, : total - n] = 0
    pos = np.maximum(np.cumsum(mask, -1) - 1, 0)
    return ids, mask, pos


def torch_logits(model, ids, mask, pos):
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                    position_ids=torch.tensor(pos))
    return out.logits.float().numpy()
