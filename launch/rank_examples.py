"""Ranks training examples by the variance of their historical training accuracy.

This is the paper's data selection: pi_1 is the top-variance example of a full-dataset run.

    python launch/rank_examples.py --acc=acc_step_500.json --top=10
    python launch/rank_examples.py --acc=acc_step_500.json --dataset=dsr_sub.parquet --top=5

Prints one line per example: rank (1 = pi_1), index, variance, mean accuracy, epochs seen, and
with --dataset the reference answer and the start of the question.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

try:
    import rlvr_jax  # noqa: F401
except ImportError:  # Run from a checkout without `pip install -e .`.
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from rlvr_jax.data import selection  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--acc", required=True,
                        help="accuracy-history JSON: {index: [accuracy per epoch, ...]}")
    parser.add_argument("--top", type=int, default=10, help="how many examples to print")
    parser.add_argument("--dataset", default=None,
                        help="optional dataset (verl parquet / jsonl) to show answers and "
                             "questions; matched by extra_info.index, else row number")
    args = parser.parse_args(argv)
    if args.top <= 0:
        parser.error("--top must be positive")

    history = selection.load_accuracy_history(args.acc)
    ranking = selection.variance_ranking(history)
    by_index = {}
    if args.dataset:
        from rlvr_jax.data import datasets  # Lazy: parquet support only when asked for.

        by_index = {e.index: e for e in datasets.load_dataset(args.dataset)}

    print(f"{'rank':>5} {'index':>6} {'variance':>9} {'mean_acc':>8} {'epochs':>6}"
          + ("  answer | question" if by_index else ""))
    for rank, (index, variance) in enumerate(ranking[:args.top], start=1):
        values = history[index]
        line = f"{rank:>5} {index:>6} {variance:>9.5f} {values.mean():>8.3f} {values.size:>6}"
        example = by_index.get(index)
        if example is not None:
            question = " ".join(example.question.split())
            line += f"  {example.answer} | {question[:70]}"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
