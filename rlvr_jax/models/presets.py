"""Architectures of the supported checkpoints, as HF config.json fields (for random-weight benchmarks,
memory plans and tests; real runs read the checkpoint's own config.json)."""

from __future__ import annotations

from rlvr_jax.models.config import ModelConfig

_QWEN2 = dict(model_type="qwen2", hidden_act="silu", rms_norm_eps=1e-6, rope_theta=10000.0)
# Qwen3 dense, as in the Qwen3-*-Base config.json files: head_dim 128 in every size (not hidden / heads),
# 8 kv heads, RoPE theta 1e6, 32k context, bos = eos = <|endoftext|> (151643).
_QWEN3 = dict(model_type="qwen3", hidden_act="silu", rms_norm_eps=1e-6, rope_theta=1000000.0, vocab_size=151936,
              head_dim=128, num_key_value_heads=8, max_position_embeddings=32768, bos_token_id=151643,
              eos_token_id=151643)

PRESETS: dict[str, dict] = {
    "qwen2.5-math-1.5b": dict(_QWEN2, vocab_size=151936, hidden_size=1536, intermediate_size=8960,
                              num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                              tie_word_embeddings=True, max_position_embeddings=4096,
                              bos_token_id=151643, eos_token_id=151643),
    "qwen2.5-math-7b": dict(_QWEN2, vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                            num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                            tie_word_embeddings=False, max_position_embeddings=4096,
                            bos_token_id=151643, eos_token_id=151643),
    "deepseek-r1-distill-qwen-1.5b": dict(_QWEN2, vocab_size=151936, hidden_size=1536, intermediate_size=8960,
                                          num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                                          tie_word_embeddings=False, max_position_embeddings=131072,
                                          bos_token_id=151646, eos_token_id=151643),
    "llama-3.2-3b-instruct": dict(model_type="llama", hidden_act="silu", rms_norm_eps=1e-5, vocab_size=128256,
                                  hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
                                  num_attention_heads=24, num_key_value_heads=8, head_dim=128,
                                  tie_word_embeddings=True, max_position_embeddings=131072,
                                  rope_theta=500000.0,
                                  rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
                                  bos_token_id=128000, eos_token_id=[128001, 128008, 128009]),
    "qwen3-0.6b": dict(_QWEN3, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                       num_attention_heads=16, tie_word_embeddings=True),
    "qwen3-1.7b": dict(_QWEN3, hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
                       num_attention_heads=16, tie_word_embeddings=True),
    "qwen3-4b": dict(_QWEN3, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                     num_attention_heads=32, tie_word_embeddings=True),
    "qwen3-8b": dict(_QWEN3, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                     num_attention_heads=32, tie_word_embeddings=False),
    "smollm2-135m": dict(model_type="llama", hidden_act="silu", rms_norm_eps=1e-5, vocab_size=49152,
                         hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, tie_word_embeddings=True, max_position_embeddings=8192,
                         rope_theta=100000.0, bos_token_id=1, eos_token_id=2),
}


def preset_config(name: str, **overrides) -> ModelConfig:
    """`ModelConfig` of a named architecture (see `PRESETS`)."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}")
    return ModelConfig.from_hf_dict(PRESETS[name], **overrides)


def num_params(cfg: ModelConfig) -> int:
    """Parameter count (tied embeddings counted once)."""
    from rlvr_jax.models.transformer import param_shapes
    import math

    import jax

    shapes = jax.tree.leaves(param_shapes(cfg), is_leaf=lambda x: isinstance(x, tuple))
    return sum(math.prod(s) for s in shapes)
