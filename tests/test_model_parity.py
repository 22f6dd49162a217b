"""Logits parity of rlvr_jax.models with transformers' torch implementation (float32)."""

import numpy as np
import pytest

from tests.hf_fixtures import left_padded_batch, make_hf_model, torch_logits

from rlvr_jax import models


def _assert_close(ours, ref, mask):
    ours, ref = np.asarray(ours)[mask.astype(bool)], ref[mask.astype(bool)]
    err = np.max(np.abs(ours - ref)) / np.max(np.abs(ref))
    assert err < 1e-4, f"max relative error {err:.2e}"


@pytest.mark.parametrize("kind,tie", [("qwen2", False), ("qwen2", True), ("llama3", False), ("llama3", True)])
def test_logits_match_transformers(tmp_path, kind, tie):
    model = make_hf_model(kind, tmp_path, tie=tie)
    cfg, params = models.load_hf(tmp_path)
    assert cfg.tie_word_embeddings == tie
    ids, mask, pos = left_padded_batch(cfg.vocab_size, [12, 7, 1], 12)
    _assert_close(models.forward(params, cfg, ids, mask), torch_logits(model, ids, mask, pos), mask)
