"""The synthetic held-out sets never contain the training example (the CPU demo's leak guard)."""

import itertools

import pytest

from rlvr_jax.data.synthetic import arithmetic_problems, parse_arithmetic, synthetic_benchmark


def test_whole_space_minus_the_training_example():
    """Operands 10..12 give 9 sums; asking for 8 with one excluded must return exactly the other 8."""
    train = parse_arithmetic("11+12")
    every = {f"What is {a} + {b}?" for a, b in itertools.product(range(10, 13), repeat=2)}
    without = arithmetic_problems(8, low=10, high=12, exclude=(train,), seed=3)
    assert {e.question for e in without} == every - {train.question}
    with pytest.raises(ValueError, match="only 9 distinct problems"):
        arithmetic_problems(9, low=10, high=12, exclude=(train,))


@pytest.mark.parametrize("spec", ["synthetic:add2d:200", "synthetic:addsub2d:500"])
@pytest.mark.parametrize("which", [0, 57, -1, "47+38"])
def test_demo_heldout_sets_exclude_the_training_example(spec, which):
    unguarded = synthetic_benchmark(spec)
    # A problem the unguarded set does contain (so the guard is what removes it), or the demo's own.
    train = unguarded[which] if isinstance(which, int) else parse_arithmetic(which)
    heldout = synthetic_benchmark(spec, exclude=(train,))
    assert len(heldout) == len(unguarded) == int(spec.rsplit(":", 1)[1])
    assert train.question not in {e.question for e in heldout}
    assert len({e.question for e in heldout}) == len(heldout)  # distinct problems
    for e in heldout:  # answers are the exact arithmetic (independent of the generator's table)
        a, op, b = e.question.removeprefix("What is ").removesuffix("?").split()
        assert int(e.answer) == (int(a) + int(b) if op == "+" else int(a) - int(b))
