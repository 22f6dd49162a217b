"""Decoder-only transformers (Qwen2, Llama 3) as pure functions, and their HF checkpoint I/O."""

from rlvr_jax.models.config import ModelConfig, RopeScaling
from rlvr_jax.models.hf_io import load_hf, save_hf
from rlvr_jax.models.transformer import (
    decoder_stack,
    forward,
    init_cache,
    init_params,
    lm_head,
    lm_head_kernel,
    logits_from_hidden,
    param_logical_axes,
    param_shapes,
    positions_from_mask,
)

__all__ = [
    "ModelConfig", "RopeScaling", "load_hf", "save_hf", "decoder_stack", "forward", "init_cache", "init_params",
    "lm_head", "lm_head_kernel", "logits_from_hidden", "param_logical_axes", "param_shapes", "positions_from_mask",
]
