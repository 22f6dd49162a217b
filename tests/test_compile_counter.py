"""`CompileCounter` counts XLA compilations: one per new (function, shapes), none on cache hits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlvr_jax.compile_counter import CompileCounter


def test_same_shapes_compile_once_new_shape_compiles_again():
    @jax.jit
    def f(x):
        return jnp.sin(x) * 2.0 + 1.0

    # Inputs are made outside the counter: eager jnp.ones / jnp.zeros compile small programs too.
    a, b, c = (jax.device_put(np.full(shape, v, np.float32)) for shape, v in (((3, 5), 1), ((3, 5), 0), ((4, 5), 1)))
    with CompileCounter() as cc:
        f(a).block_until_ready()
        f(b).block_until_ready()  # same shapes: cached executable
    assert cc.count == 1, cc.summary()
    assert cc.seconds > 0
    assert cc.names == ["jit(f)"]

    with CompileCounter() as again:
        f(a).block_until_ready()
    assert again.count == 0, again.summary()

    with CompileCounter() as new_shape:
        f(c).block_until_ready()
    assert new_shape.count == 1
    assert new_shape.summary().startswith("1 compiles")


def test_counts_only_while_active_and_nests():
    g = jax.jit(lambda x: x @ x.T)
    x2, x5, x6 = (jax.device_put(np.ones((n, 3), np.float32)) for n in (2, 5, 6))
    outer = CompileCounter()
    with outer:
        with CompileCounter() as inner:
            g(x2).block_until_ready()
        g(x5).block_until_ready()
    g(x6).block_until_ready()  # after exit: not counted
    assert inner.count == 1
    assert outer.count == 2
    assert outer.by_name() == {"jit(<lambda>)": 2}


def test_double_start_is_an_error():
    cc = CompileCounter().start()
    try:
        with pytest.raises(RuntimeError):
            cc.start()
    finally:
        cc.stop()
    cc.stop()  # idempotent


def test_release_after_compiles_trims_the_heap_once_per_compilation(monkeypatch):
    from rlvr_jax import host_memory

    calls = []
    monkeypatch.setattr(host_memory, "release_free_memory", lambda: calls.append(1))
    host_memory.release_after_compiles()
    host_memory.release_after_compiles()  # idempotent: still one listener

    @jax.jit
    def f(x):
        return x * 3.0 + 1.0

    a, b = (jax.device_put(np.ones(shape, np.float32)) for shape in ((7,), (9,)))
    f(a).block_until_ready()
    f(a).block_until_ready()  # cached: no compile, no trim
    assert len(calls) == 1
    f(b).block_until_ready()  # a new shape compiles again
    assert len(calls) == 2
