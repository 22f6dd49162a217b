"""`CompileCounter`: counts XLA compilations inside a `with` block (benchmarks assert none after warm-up).

JAX reports every backend compilation through `jax.monitoring` as a duration event named
`/jax/core/compile/backend_compile_duration` (with the jitted function's name as `fun_name`); it
fires once per compiled program, i.e. on every miss of jit's in-memory executable cache, whether or
not the persistent compilation cache then supplies the binary. A listener registered on
`__enter__` and removed on `__exit__` counts those events. Tracing without compiling (e.g.
`jax.eval_shape`) is not counted.

    with CompileCounter() as cc:
        step(state, batch)
    assert cc.count == 0, cc.summary()
"""

from __future__ import annotations

import collections
import threading

import jax

BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


class CompileCounter:
    """Counts backend compilations while active (a context manager; listeners are process-global).

    Attributes:
      count: programs compiled while active.
      seconds: total backend compile time of those programs.
      names: the `fun_name` of each compiled program, in order (e.g. "jit__rollout").
    """

    def __init__(self):
        self.count = 0
        self.seconds = 0.0
        self.names: list[str] = []
        self._lock = threading.Lock()  # compiles may come from several threads
        self._active = False

    def _on_duration(self, event: str, duration: float, **kwargs) -> None:
        if event != BACKEND_COMPILE_EVENT:
            return
        with self._lock:
            self.count += 1
            self.seconds += float(duration)
            self.names.append(str(kwargs.get("fun_name", "?")))

    def start(self) -> "CompileCounter":
        if self._active:
            raise RuntimeError("CompileCounter is already active")
        jax.monitoring.register_event_duration_secs_listener(self._on_duration)
        self._active = True
        return self

    def stop(self) -> None:
        if self._active:
            jax.monitoring.unregister_event_duration_listener(self._on_duration)
            self._active = False

    def __enter__(self) -> "CompileCounter":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def by_name(self) -> dict[str, int]:
        """Compilations per program name."""
        return dict(collections.Counter(self.names))

    def summary(self) -> str:
        """One line: count, seconds and the programs, e.g. `3 compiles (1.2 s): jit_f x2, jit_g`."""
        parts = [f"{name} x{k}" if k > 1 else name for name, k in self.by_name().items()]
        return f"{self.count} compiles ({self.seconds:.1f} s)" + (": " + ", ".join(parts) if parts else "")
