"""`config.jax_cache_dir`: a second run loads its programs from disk; JAX's own setting wins."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rlvr_jax.experiment import compilation_cache  # noqa: E402

# Runs one training step of the tiny config in a fresh process (JAX's cache settings are per process)
# and prints how many programs JAX compiled or loaded, and how many of them came from the persistent cache.
_RUN = """
import json, sys
import jax
from configs import tiny
from rlvr_jax import experiment
from rlvr_jax.compile_counter import CompileCounter
hits = []
jax.monitoring.register_event_listener(
    lambda name, **kw: hits.append(name) if name == "/jax/compilation_cache/cache_hits" else None)
c = tiny.get_config()
c.jax_cache_dir = sys.argv[1]
c.trainer.total_steps, c.trainer.save_every, c.trainer.progress = 1, 0, False
c.mesh.num_devices = 1  # one of the session's eight fake CPU devices, as on a user's CPU
with CompileCounter() as compiles:
    experiment.train(c, sys.argv[2])
print("OUT", json.dumps({"hits": len(hits), "compiles": compiles.count, "dir": jax.config.jax_compilation_cache_dir}))
"""


def _python(script: str, *args: str, **env_extra) -> object:
    """Runs `script` in a fresh process without the session's cache variable; its `OUT <json>` line."""
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env.update(PYTHONPATH=str(REPO), **env_extra)
    proc = subprocess.run([sys.executable, "-c", script, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("OUT "))[len("OUT "):])


def _run(cache_value: str, workdir: pathlib.Path) -> dict:
    # Tiny-model programs compile in well under JAX's 1 s threshold: cache them all.
    return _python(_RUN, cache_value, str(workdir), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")


def test_second_run_loads_its_programs_from_the_cache(tmp_path):
    cache = tmp_path / "xla"
    first = _run(str(cache), tmp_path / "run1")
    assert first["dir"] == str(cache) and first["hits"] == 0 and first["compiles"] > 0
    written = list(cache.iterdir())
    assert written, "nothing was written to the cache"
    second = _run(str(cache), tmp_path / "run2")
    # Every program of the first run is found again (CompileCounter counts loads too: jit's cache missed).
    assert second["hits"] == first["compiles"] == second["compiles"], (first, second)


_CONFIGURE = """
import json, sys
import jax
from rlvr_jax.experiment import compilation_cache
path = compilation_cache.configure(sys.argv[1])
print("OUT", json.dumps([str(path), jax.config.jax_compilation_cache_dir, jax.config.jax_compilation_cache_max_size]))
"""


def _configure(value: str, **env_extra) -> list:
    return _python(_CONFIGURE, value, **env_extra)


def test_auto_lives_under_the_cache_root_capped_and_the_environment_wins(tmp_path):
    root = tmp_path / "root"
    xla = str(root / "xla")
    assert _configure("auto", RLVR_JAX_CACHE=str(root)) == [xla, xla, compilation_cache.AUTO_MAX_BYTES]
    assert (root / "xla").is_dir()
    # A directory the config names keeps JAX's own size limit (unlimited by default).
    assert _configure(str(tmp_path / "named")) == [str(tmp_path / "named")] * 2 + [-1]
    # A directory chosen through JAX's own variable is kept, whatever the config says.
    mine = str(tmp_path / "mine")
    assert _configure("auto", RLVR_JAX_CACHE=str(root), JAX_COMPILATION_CACHE_DIR=mine) == [mine, mine, -1]
    assert _configure("", JAX_COMPILATION_CACHE_DIR=mine)[:2] == [mine, mine]
    assert _configure("") == ["None", None, -1]


def test_resolve_values(tmp_path, monkeypatch):
    monkeypatch.setenv("RLVR_JAX_CACHE", str(tmp_path))
    assert compilation_cache.resolve("") is None
    assert compilation_cache.resolve("auto") == tmp_path / "xla"
    assert compilation_cache.resolve("~/x") == pathlib.Path.home() / "x"
    with pytest.raises(ValueError, match="jax_cache_dir"):
        compilation_cache.resolve(None)

