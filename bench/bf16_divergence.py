"""Where a bf16 rollout/trainer log-prob mismatch comes from: one prompt, two layouts, layer by layer.

The sampler and the trainer compute the same tokens with different shapes (a prefill or a one-token decode
step against a whole padded sequence). This runs SmolLM2-135M's bf16 forward on one MATH500 prompt twice,
as is and behind one left-padding slot (the same real tokens and positions; only the shapes differ), and
prints, after each layer, the largest difference of the residual stream relative to its largest value, then
the next-token log-probs of each layout against a float32 forward. A difference that starts at float32
rounding (~1e-7) and grows layer after layer is rounding that went one way in one program and the other
way in the other (a bf16 rounding step is 2^-8 of a value), amplified by depth: not a systematic error of
either path.

    python bench/bf16_divergence.py                           # residual stream in float32 (the default)
    python bench/bf16_divergence.py --residual-dtype bfloat16  # every matmul output rounded to bf16
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from rlvr_jax import models  # noqa: E402
from rlvr_jax.models import gguf_import  # noqa: E402
from rlvr_jax.models import transformer as tfm  # noqa: E402


def layer_states(params, cfg, prompt, pad: int) -> list[np.ndarray]:
    """The residual stream of the real tokens after the embedding and after each layer (float32 copies)."""
    ids = jnp.array([[0] * pad + prompt])
    mask = jnp.array([[0] * pad + [1] * len(prompt)])
    positions = tfm.positions_from_mask(mask)
    t = ids.shape[1]
    mask_bts = (jnp.arange(t)[None, None, :] <= jnp.arange(t)[None, :, None]) & mask[:, None, :].astype(bool)
    layer = jax.jit(lambda h, lp: tfm._layer(cfg, None, h, lp, positions, mask_bts, None, 0)[0])
    h = tfm.embed(params["embed_tokens"]["embedding"], ids, cfg)
    out = [h]
    for i in range(cfg.num_layers):
        h = layer(h, jax.tree.map(lambda x, i=i: x[i], params["layers"]))
        out.append(h)
    return [np.asarray(x[0, pad:], np.float32) for x in out]


def next_token_logprobs(params, cfg, prompt, pad: int) -> np.ndarray:
    ids = np.array([[0] * pad + prompt])
    mask = np.array([[0] * pad + [1] * len(prompt)])
    return np.asarray(jax.nn.log_softmax(models.forward(params, cfg, ids, mask)[0, -1]))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--residual-dtype", default="float32")
    ap.add_argument("--pad", type=int, default=1, help="left-padding slots of the second layout")
    args = ap.parse_args(argv)
    import transformers

    from rollout import math500_prompts

    path = gguf_import.ensure_smollm2()
    prompt = math500_prompts(transformers.AutoTokenizer.from_pretrained(path), 1)[0]
    cfg, params = models.load_hf(path, dtype="bfloat16")
    cfg = cfg.replace(dtype="bfloat16", param_dtype="bfloat16", residual_dtype=args.residual_dtype)
    print(f"SmolLM2-135M bf16, residual {args.residual_dtype}; prompt of {len(prompt)} tokens, "
          f"as is vs behind {args.pad} padding slot(s)")
    a, b = layer_states(params, cfg, prompt, 0), layer_states(params, cfg, prompt, args.pad)
    for i, (x, y) in enumerate(zip(a, b)):
        print(f"  after {'embedding' if i == 0 else f'layer {i}':>10}: max |difference| / max |value| "
              f"{np.abs(x - y).max() / np.abs(x).max():.1e}")
    cfg32, params32 = models.load_hf(path, dtype="float32")
    ref = next_token_logprobs(params32, cfg32.replace(dtype="float32"), prompt, 0)
    lp_a, lp_b = (next_token_logprobs(params, cfg, prompt, p) for p in (0, args.pad))
    print(f"next-token log-probs, mean |difference| over the vocabulary: layouts {np.abs(lp_a - lp_b).mean():.2e}; "
          f"as is vs float32 {np.abs(lp_a - ref).mean():.2e}; padded vs float32 {np.abs(lp_b - ref).mean():.2e}")


if __name__ == "__main__":
    main()
