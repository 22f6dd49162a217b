"""Meshes, logical-axis rules, and sharded loading + forward on a (data=2, fsdp=2, tensor=2) mesh."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from tests.hf_fixtures import left_padded_batch, make_hf_model, torch_logits

from rlvr_jax import models, sharding
from rlvr_jax.models import transformer


def test_make_mesh_shapes():
    assert dict(sharding.make_mesh((2, 2, 2)).shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert dict(sharding.make_mesh((1, -1, 2)).shape) == {"data": 1, "fsdp": 4, "tensor": 2}
    assert dict(sharding.make_mesh({"tensor": 8}).shape) == {"data": 1, "fsdp": 1, "tensor": 8}
    assert dict(sharding.make_mesh((1, -1, 1), devices=jax.devices()[:2]).shape) == {"data": 1, "fsdp": 2, "tensor": 1}
    with pytest.raises(ValueError, match="needs 16 devices"):
        sharding.make_mesh((2, 2, 4))
    with pytest.raises(ValueError, match="at most one mesh axis may be -1"):
        sharding.make_mesh((-1, -1, 1))
    with pytest.raises(ValueError, match="cannot be split"):
        sharding.make_mesh((3, -1, 1))


def test_sharder_spec_rules():
    s = sharding.Sharder(sharding.make_mesh((2, 2, 2)))
    assert s.spec((sharding.EMBED, sharding.HEADS), (64, 64)) == P("fsdp", "tensor")
    # A mesh axis that does not divide the dimension is dropped (replicated), not an error.
    assert s.spec((sharding.VOCAB, sharding.EMBED), (97, 64)) == P(None, "fsdp")
    assert s.spec((sharding.ACT_BATCH, sharding.ACT_LENGTH), (4, 8)) == P(("data", "fsdp"), None)
    assert s.spec((sharding.ACT_BATCH, sharding.ACT_LENGTH), (2, 8)) == P("data", None)
    assert s.spec((sharding.LAYERS, sharding.NORM), (2, 64)) == P(None, None)
    # Size-1 mesh axes never appear; a mesh axis is used at most once per array.
    s1 = sharding.Sharder(sharding.make_mesh((1, 8, 1)))
    assert s1.spec((sharding.EMBED, sharding.HEADS), (64, 64)) == P("fsdp", None)
    rules = sharding.rules_from_config([["embed", ["fsdp", "tensor"]], ["heads", "tensor"]])
    assert sharding.Sharder(s.mesh, rules).spec(("embed", "heads"), (64, 64)) == P(("fsdp", "tensor"), None)
    with pytest.raises(ValueError, match="mesh has no axis 'model'"):
        sharding.Sharder(s.mesh, (("heads", "model"),))


def _qwen_vocab128(path):
    """Tiny Qwen2 with a vocab divisible by the tensor axis, so lm_head / embeddings really split."""
    return make_hf_model("qwen2", path, seed=1, vocab_size=128)


@pytest.mark.parametrize("kind", ["qwen2_v128", "llama3"])
def test_sharded_load_and_forward_match_single_device(tmp_path, kind):
    model = _qwen_vocab128(tmp_path) if kind == "qwen2_v128" else make_hf_model("llama3", tmp_path, tie=True)
    mesh = sharding.make_mesh((2, 2, 2))
    sharder = sharding.Sharder(mesh)
    cfg, params = models.load_hf(tmp_path, mesh=mesh)

    axes = transformer.param_logical_axes(cfg)
    flat_params = jax.tree_util.tree_flatten_with_path(params)[0]
    flat_axes = jax.tree.leaves(axes, is_leaf=lambda x: isinstance(x, tuple))
    for (path, x), names in zip(flat_params, flat_axes):
        assert x.sharding.mesh == mesh, path
        assert x.sharding.spec == sharder.spec(names, x.shape), path
    layers = params["layers"]
    # Really split as the rules say: q kernel [l, d, h*e] -> (None, fsdp, tensor), 8 shards of 1/4 each.
    q = layers["self_attn"]["q_proj"]["kernel"]
    assert q.sharding.spec == P(None, "fsdp", "tensor")
    assert {s.data.shape for s in q.addressable_shards} == {(2, 32, 32)}
    assert layers["mlp"]["down_proj"]["kernel"].sharding.spec == P(None, "tensor", "fsdp")
    if kind == "qwen2_v128":
        assert params["lm_head"]["kernel"].sharding.spec == P("fsdp", "tensor")
        assert params["embed_tokens"]["embedding"].sharding.spec == P("tensor", "fsdp")
        assert layers["self_attn"]["k_proj"]["bias"].sharding.spec == P(None, "tensor")

    ids, mask, pos = left_padded_batch(cfg.vocab_size, [9, 5, 2, 9], 9)
    _, single = models.load_hf(tmp_path)
    ref = np.asarray(models.forward(single, cfg, ids, mask))
    sharded = models.forward(params, cfg, ids, mask, sharder=sharder)
    np.testing.assert_allclose(np.asarray(sharded), ref, rtol=1e-5, atol=1e-5)
    m = mask.astype(bool)
    torch_ref = torch_logits(model, ids, mask, pos)
    assert np.max(np.abs(np.asarray(sharded)[m] - torch_ref[m])) / np.max(np.abs(torch_ref[m])) < 1e-4
