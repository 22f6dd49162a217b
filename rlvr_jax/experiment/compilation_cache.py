"""`config.jax_cache_dir`: JAX's persistent compilation cache, so a program is compiled once per machine.

Compiling is a large share of a short run on a CPU (the demo's first step and evaluation take ~40 s
each, mostly XLA compiling), and a run compiles the same programs every time it starts, resumes, or
(with `eval.release_programs`) evaluates again. With the cache on, JAX writes each compiled executable
that took at least `jax_persistent_cache_min_compile_time_secs` (JAX's default, 1 s) to disk and loads
it instead of compiling when the same program, JAX version and device come back. The cache is trusted
code (JAX's warning): keep it in a directory only you can write.

Values of `config.jax_cache_dir`: "" leaves JAX as it is (off unless the environment sets
`JAX_COMPILATION_CACHE_DIR`); "auto" is `<cache root>/xla`, beside the converted demo model
(`$RLVR_JAX_CACHE`, else `~/.cache/rlvr_jax`); anything else is a directory. A directory already set
through JAX's own settings (`JAX_COMPILATION_CACHE_DIR`, `jax.config.update`) wins over the config:
the caller chose it for this process (the tests give each session its own).
"""

from __future__ import annotations

import os
import pathlib

import jax

# The "auto" directory is capped (least recently used entries go first); a directory the user names
# keeps JAX's own limit (`jax_compilation_cache_max_size`, unlimited by default).
AUTO_MAX_BYTES = 2 * 2**30


def resolve(value: str) -> pathlib.Path | None:
    """The directory `config.jax_cache_dir = value` names, or None for "" (off)."""
    if not isinstance(value, str):
        raise ValueError(f"jax_cache_dir must be a string, got {value!r}")
    if not value:
        return None
    if value == "auto":
        from rlvr_jax.models.gguf_import import cache_root

        return cache_root() / "xla"
    return pathlib.Path(os.path.expanduser(value))


def configure(value: str) -> pathlib.Path | None:
    """Turns the persistent cache on for this process; returns the directory in use (None: off).

    Call it before the first compile of the run: JAX reads the directory when it first needs it.
    """
    current = jax.config.jax_compilation_cache_dir
    if current:
        return pathlib.Path(current)
    path = resolve(value)
    if path is None:
        return None
    path.mkdir(parents=True, exist_ok=True)
    if value == "auto" and jax.config.jax_compilation_cache_max_size == -1:
        jax.config.update("jax_compilation_cache_max_size", AUTO_MAX_BYTES)
    jax.config.update("jax_compilation_cache_dir", str(path))
    return path
