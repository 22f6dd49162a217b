"""`transformer.attention`: the einsum path equals `jax.nn.dot_product_attention` on the same call
(GQA, boolean [B, 1, T, S] mask, True = attend), and the "cudnn" path zeroes query rows with no key.

cuDNN itself needs a GPU; here its call is checked through the XLA implementation of the same API
(identical arguments), and the NaN guard by substituting a kernel that returns NaN on masked rows.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlvr_jax.models import transformer
from rlvr_jax.models.config import ModelConfig

H, K, E = 4, 2, 16  # 4 query heads share 2 kv heads (GQA, group of 2)


def _cfg(impl: str) -> ModelConfig:
    return ModelConfig(model_type="qwen2", vocab_size=32, hidden_size=H * E, intermediate_size=32, num_layers=1,
                       num_heads=H, num_kv_heads=K, head_dim=E, attention_impl=impl)


def _inputs(t: int, s: int, cache_index: int, prompt_lens=(6, 3, 1)):
    """q/k/v and the mask `decode` builds: causal by slot, and keys limited to real (left-padded) tokens."""
    b = len(prompt_lens)
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.normal(size=(b, t, H, E)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(b, s, K, E)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(b, s, K, E)), jnp.float32)
    p = max(prompt_lens)
    kv_mask = np.ones((b, s), bool)
    for r, n in enumerate(prompt_lens):
        kv_mask[r, : p - n] = False  # left padding of the prompt
    q_slots = cache_index + np.arange(t)
    mask = (np.arange(s)[None, None, :] <= q_slots[None, :, None]) & kv_mask[:, None, :]
    return q, k, v, jnp.asarray(mask)


@pytest.mark.parametrize("t,s,cache_index", [(6, 6, 0), (1, 10, 7)], ids=["prefill", "decode"])
def test_einsum_path_equals_dot_product_attention_xla(t, s, cache_index):
    q, k, v, mask = _inputs(t, s, cache_index)
    ours = transformer.attention(q, k, v, mask, _cfg("xla"))
    ref = jax.nn.dot_product_attention(q, k, v, mask=mask[:, None], implementation="xla")
    b = q.shape[0]
    assert ref.shape == (b, t, H, E)
    ref = ref.reshape(b, t, H * E)
    valid = np.asarray(mask.any(-1))  # query rows with at least one key
    np.testing.assert_allclose(np.asarray(ours)[valid], np.asarray(ref)[valid], rtol=1e-5, atol=1e-5)
    if t > 1:
        assert not valid.all()  # the prefill case does exercise fully masked (left-pad) query rows


def test_gqa_head_order_matches_repeat_kv():
    """Query head h reads kv head h // (H / K), in both implementations (HF's repeat_kv order)."""
    q, k, v, mask = _inputs(6, 6, 0, prompt_lens=(6, 6, 6))
    ours = transformer.attention(q, k, v, mask, _cfg("xla")).reshape(3, 6, H, E)
    g = H // K
    k_rep, v_rep = jnp.repeat(k, g, axis=2), jnp.repeat(v, g, axis=2)  # MHA with repeated kv heads
    mha = jax.nn.dot_product_attention(q, k_rep, v_rep, mask=mask[:, None], implementation="xla")
    np.testing.assert_allclose(np.asarray(ours), np.asarray(mha), rtol=1e-5, atol=1e-5)


def test_cudnn_path_zeroes_fully_masked_rows(monkeypatch):
    """A kernel that returns NaN for query rows with no key must not leak NaN (values or gradients)."""
    real = jax.nn.dot_product_attention
    calls = []

    def nan_kernel(q, k, v, bias=None, mask=None, **kw):
        calls.append(kw.get("implementation"))
        assert mask.shape == (q.shape[0], 1, q.shape[1], k.shape[1]) and mask.dtype == jnp.bool_
        out = real(q, k, v, bias, mask, **dict(kw, implementation="xla"))
        empty = ~mask.any(-1)[:, 0, :, None, None]  # [b, t, 1, 1]
        return jnp.where(empty, jnp.nan, out)

    monkeypatch.setattr(jax.nn, "dot_product_attention", nan_kernel)
    q, k, v, mask = _inputs(6, 6, 0)
    out = transformer.attention(q, k, v, mask, _cfg("cudnn"))
    assert calls == ["cudnn"]
    valid = np.asarray(mask.any(-1))
    assert np.isfinite(np.asarray(out)).all()
    np.testing.assert_array_equal(np.asarray(out)[~valid], 0.0)
    ref = transformer.attention(q, k, v, mask, _cfg("xla"))
    np.testing.assert_allclose(np.asarray(out)[valid], np.asarray(ref)[valid], rtol=1e-5, atol=1e-5)

    # A masked loss (as the policy loss) has finite gradients.
    loss = lambda q: jnp.sum(transformer.attention(q, k, v, mask, _cfg("cudnn")) * valid[..., None])  # noqa: E731
    assert np.isfinite(np.asarray(jax.grad(loss)(q))).all()
