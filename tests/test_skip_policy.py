"""CI's skip policy (tests/conftest.py + tests/allowed_skips.py): an unlisted skip fails the run."""

import os
import subprocess
import sys

from tests import allowed_skips
from tests.train_cli import REPO

_SKIPPING = "import pytest\n\ndef test_skips():\n    pytest.skip('no such thing here')\n\ndef test_passes():\n    pass\n"


def _pytest(tmp_path) -> subprocess.CompletedProcess:
    (tmp_path / "test_skipping.py").write_text(_SKIPPING)
    env = dict(os.environ, PYTHONPATH=str(REPO), RLVR_JAX_STRICT_SKIPS="1")
    # The repo's conftest loaded as a plugin, exactly as CI's `pytest tests` loads it.
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "tests.conftest",
                           "-p", "no:cacheprovider", str(tmp_path / "test_skipping.py")],
                          env=env, capture_output=True, text=True, cwd=tmp_path, timeout=300)


def test_unlisted_skip_fails_the_strict_run(tmp_path):
    strict = _pytest(tmp_path)
    assert strict.returncode == 1, strict.stdout
    assert "skips not in tests/allowed_skips.py" in strict.stdout
    assert "test_skipping.py::test_skips: Skipped: no such thing here" in strict.stdout


def test_allow_list_entries_carry_a_reason():
    for pattern, why in allowed_skips.ALLOWED_SKIPS:
        assert pattern.strip() and len(why.split()) >= 3, (pattern, why)
