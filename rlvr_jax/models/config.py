"""ModelConfig: the architecture hyper-parameters of a Qwen2 / Qwen3 / Llama-3 decoder, read from HF config.json."""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any



@dataclasses.dataclass(frozen=True)
class ArchTraits:
    """What a model_type fixes about the architecture, whatever its config.json says.

    Attributes:
      hf_class: the transformers class written into `architectures` on export.
      attention_bias: q/k/v projections carry a bias (Qwen2 always; Llama and Qwen3 never: their
        `attention_bias` flag would also put one on o_proj, which this model does not have).
      qk_norm: RMSNorm over each head of q and k before RoPE (Qwen3).
    """

    hf_class: str
    attention_bias: bool
    qk_norm: bool


SUPPORTED_MODEL_TYPES = {
    "qwen2": ArchTraits("Qwen2ForCausalLM", attention_bias=True, qk_norm=False),
    "qwen3": ArchTraits("Qwen3ForCausalLM", attention_bias=False, qk_norm=True),
    "llama": ArchTraits("LlamaForCausalLM", attention_bias=False, qk_norm=False),
}

# Relatives of the supported types that this dense decoder cannot represent, with the reason.
REFUSED_MODEL_TYPES = {
    "qwen3_moe": "mixture-of-experts MLP layers (only dense SwiGLU MLPs are implemented)",
    "qwen2_moe": "mixture-of-experts MLP layers (only dense SwiGLU MLPs are implemented)",
    "mixtral": "mixture-of-experts MLP layers (only dense SwiGLU MLPs are implemented)",
    "qwen3_next": "hybrid linear attention and mixture-of-experts layers",
    "qwen2_vl": "a vision encoder and multimodal RoPE",
    "qwen2_5_vl": "a vision encoder and multimodal RoPE",
    "qwen3_vl": "a vision encoder and multimodal RoPE",
}


# Attention kernels: "xla" (einsum, any backend), "cudnn" (jax.nn.dot_product_attention, GPU).
ATTENTION_IMPLS = ("xla", "cudnn")
# Per-layer rematerialisation modes of the backward pass (see transformer.decoder_stack).
REMAT_MODES = ("none", "full", "dots")
DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """Llama-3 style frequency-dependent RoPE scaling ("rope_type": "llama3")."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of one decoder-only transformer. Hashable, so it can be a static jit argument."""

    model_type: str
    vocab_size: int
    hidden_size: int  # d
    intermediate_size: int  # f
    num_layers: int  # l
    num_heads: int  # h
    num_kv_heads: int  # k
    head_dim: int  # e
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # bias on q/k/v projections (Qwen2: True)
    qk_norm: bool = False  # RMSNorm over each head of q and k, before RoPE (Qwen3: True)
    max_position_embeddings: int = 4096
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    # Storage dtype of params and compute dtype of matmuls are separate: fp32 master weights with bf16
    # compute is the accelerator default; fp32/fp32 is what parity tests need.
    param_dtype: str = "float32"
    dtype: str = "float32"
    # The residual stream and every matmul's output (accumulated in float32 and kept there); matmul inputs
    # are cast to `dtype`. "float32" with bf16 compute rounds only what enters a matmul, and two programs
    # that compute the same matmul with different shapes (the sampler's one-token decode step and the
    # trainer's whole-sequence pass) then round it the same way almost always; with every output rounded
    # to bf16 (transformers' bf16 arithmetic, "bfloat16" here) XLA elides some of those roundings in one
    # program and not the other; the two paths' log-probs disagreed by 2.4e-2 on average, 1.0e-2 with
    # "float32" (SmolLM2, BENCHMARKS.md: the rest is float32 reduction order amplified by depth).
    residual_dtype: str = "float32"
    # "xla": einsum attention (any backend); "cudnn": jax.nn.dot_product_attention's flash kernel.
    attention_impl: str = "xla"
    # Rematerialise each layer's activations in the backward pass: "none", "full" or "dots"
    # (save matmul outputs only).
    remat: str = "none"

    def __post_init__(self):
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})"
            )
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ValueError(f"attention_impl must be one of {ATTENTION_IMPLS}, got {self.attention_impl!r}")
        if self.residual_dtype not in DTYPES:
            raise ValueError(f"residual_dtype must be one of {DTYPES}, got {self.residual_dtype!r}")
        if self.remat not in REMAT_MODES:
            raise ValueError(f"remat must be one of {REMAT_MODES}, got {self.remat!r}")

    def replace(self, **kwargs) -> "ModelConfig":
        return dataclasses.replace(self, **kwargs)

    @classmethod
    def from_hf_dict(cls, hf: dict[str, Any], **overrides) -> "ModelConfig":
        """Builds a config from the parsed contents of an HF `config.json`.

        Understands both the transformers<5 layout (`rope_theta`, `rope_scaling`) and the v5 layout
        (`rope_parameters`).
        """
        model_type = hf.get("model_type")
        _check_representable(hf)
        traits = SUPPORTED_MODEL_TYPES[model_type]
        num_heads = hf["num_attention_heads"]
        head_dim = hf.get("head_dim") or hf["hidden_size"] // num_heads
        rope = dict(hf.get("rope_parameters") or {})
        rope_theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
        scaling = dict(hf.get("rope_scaling") or rope)
        rope_type = scaling.get("rope_type", scaling.get("type", "default"))
        rope_scaling = None
        if rope_type == "llama3":
            rope_scaling = RopeScaling(
                factor=float(scaling["factor"]),
                low_freq_factor=float(scaling["low_freq_factor"]),
                high_freq_factor=float(scaling["high_freq_factor"]),
                original_max_position_embeddings=int(scaling["original_max_position_embeddings"]),
            )
        elif rope_type not in ("default", None):
            raise ValueError(f"unsupported rope type {rope_type!r}; supported: default, llama3")
        partial_rotary = scaling.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
        if partial_rotary != 1.0:
            raise ValueError(f"partial_rotary_factor={partial_rotary} is not supported (only 1.0)")
        eos = hf.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, (list, tuple)) else (() if eos is None else (eos,))
        fields = dict(
            model_type=model_type,
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=num_heads,
            num_kv_heads=hf.get("num_key_value_heads") or num_heads,
            head_dim=head_dim,
            rope_theta=float(rope_theta),
            rope_scaling=rope_scaling,
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            # Qwen2's q/k/v always carry a bias, whatever the config says; Llama's and Qwen3's never
            # (a true `attention_bias` is refused above).
            attention_bias=traits.attention_bias,
            qk_norm=traits.qk_norm,
            max_position_embeddings=int(hf.get("max_position_embeddings", 4096)),
            bos_token_id=hf.get("bos_token_id"),
            eos_token_ids=eos_ids,
        )
        fields.update(overrides)
        return cls(**fields)

    @classmethod
    def from_pretrained(cls, path: str | pathlib.Path, **overrides) -> "ModelConfig":
        """Reads `<path>/config.json`."""
        path = pathlib.Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"model directory not found: {path}")
        cfg_file = path / "config.json"
        if not cfg_file.is_file():
            raise FileNotFoundError(f"no config.json in model directory {path}")
        return cls.from_hf_dict(json.loads(cfg_file.read_text()), **overrides)

    def to_hf_dict(self) -> dict[str, Any]:
        """The HF `config.json` contents (transformers<5 layout, which v5 also reads)."""
        traits = SUPPORTED_MODEL_TYPES[self.model_type]
        if (self.attention_bias, self.qk_norm) != (traits.attention_bias, traits.qk_norm):
            raise ValueError(
                f"cannot export {self.model_type} with attention_bias={self.attention_bias}, qk_norm={self.qk_norm}: "
                f"HF {traits.hf_class} has attention_bias={traits.attention_bias}, qk_norm={traits.qk_norm}")
        hf = {
            "architectures": [traits.hf_class],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rope_theta": self.rope_theta,
            "rope_scaling": None,
            "rms_norm_eps": self.rms_norm_eps,
            "tie_word_embeddings": self.tie_word_embeddings,
            "max_position_embeddings": self.max_position_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": list(self.eos_token_ids) if len(self.eos_token_ids) > 1 else
            (self.eos_token_ids[0] if self.eos_token_ids else None),
            "torch_dtype": self.param_dtype,
        }
        if self.model_type == "llama":
            hf["attention_bias"] = self.attention_bias
            hf["mlp_bias"] = False
        else:
            hf["use_sliding_window"] = False
        if self.model_type == "qwen3":
            hf["attention_bias"] = False
        if self.rope_scaling is not None:
            hf["rope_scaling"] = {"rope_type": "llama3", **dataclasses.asdict(self.rope_scaling)}
        return hf


def _check_representable(hf: dict[str, Any]) -> None:
    """Raises ValueError naming the first feature of an HF config.json this decoder cannot represent."""
    model_type = hf.get("model_type")
    if model_type in REFUSED_MODEL_TYPES:
        raise ValueError(f"unsupported model_type {model_type!r}: it has {REFUSED_MODEL_TYPES[model_type]}; "
                         f"supported: {sorted(SUPPORTED_MODEL_TYPES)}")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"unsupported model_type {model_type!r}; supported: {sorted(SUPPORTED_MODEL_TYPES)}")
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"unsupported hidden_act {hf['hidden_act']!r}; only 'silu' is implemented")
    if model_type in ("qwen2", "qwen3") and hf.get("use_sliding_window", False):
        raise ValueError(f"{model_type} sliding-window attention (use_sliding_window=true) is not supported")
    if any(t != "full_attention" for t in hf.get("layer_types") or ()):
        raise ValueError(f"layer_types {sorted(set(hf['layer_types']))}: only full_attention layers are supported")
    if hf.get("mlp_bias", False):
        raise ValueError("mlp_bias=true is not supported")
    # HF Llama and Qwen3 put `attention_bias` on o_proj as well as q/k/v; our o_proj has no bias.
    if model_type in ("llama", "qwen3") and hf.get("attention_bias", False):
        raise ValueError(f"{model_type} with attention_bias=true is not supported (o_proj would need a bias)")
