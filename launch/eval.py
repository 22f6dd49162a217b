r"""Evaluate a model on math benchmarks with the paper's protocol: flags and one library call.

    # The paper's six benchmarks, an HF checkpoint (greedy MATH500 / Minerva / OlympiadBench,
    # avg@8 at temperature 0.6 for AIME24 / AIME25 / AMC23, 3,072 new tokens):
    python launch/eval.py --config=configs/qwen15b_1shot.py \
      --config.model.path=/models/Qwen2.5-Math-1.5B --config.eval.data_dir=/data/eval --benchmarks=paper

    # A training run's latest checkpoint (a workdir holding checkpoints/ and config.json):
    python launch/eval.py --config=configs/qwen15b_1shot.py --config.model.path=runs/qwen15b_1shot

    # Every checkpoint of a run (train with trainer.keep=0), resumable; or --steps=20,40,60:
    python launch/eval.py --config=configs/qwen15b_1shot.py --config.model.path=runs/qwen15b_1shot \
      --benchmarks=paper --steps=all

    # Smoke test: the random tiny model on a jsonl file.
    python launch/eval.py --config=configs/tiny.py --benchmarks=problems.jsonl

Writes into --out_dir (default ./runs/<config.name>/eval, plus /step_<N> for a checkpoint)
`samples/<benchmark>.jsonl`, `summary.json`, `results.md`; see `rlvr_jax.experiment.evaluate`.
--steps adds `sweep.md` / `sweep.json` (step x benchmark) and `curves/<benchmark>.png` there.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # `configs` from a checkout.

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Run config file (the training configs).", lock_config=True)
flags.DEFINE_string("out_dir", None, "Output directory; default ./runs/<config.name>/eval (/step_<N> for a "
                    "checkpoint).")
flags.DEFINE_integer("step", None, "Checkpoint step when config.model.path is a training workdir; default the "
                     "latest.")
flags.DEFINE_list("benchmarks", None, "Benchmarks to evaluate, overriding config.eval.benchmarks: names, "
                  "dataset files, or `paper` for the six of the paper.")
flags.DEFINE_string("steps", None, "Evaluate several checkpoints of the training workdir config.model.path: "
                    "`all` or `20,40,60`; finished steps are skipped; writes sweep.md and a curve per benchmark.")
flags.DEFINE_bool("greedy", False, "Decode every benchmark greedily (a quick check; not the paper's protocol "
                  "for AIME24/AIME25/AMC23).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from rlvr_jax import experiment

    greedy = True if FLAGS.greedy else None
    if FLAGS.steps is not None:
        if FLAGS.step is not None:
            raise app.UsageError("give --step (one checkpoint) or --steps (a sweep), not both")
        result = experiment.evaluate_checkpoints(FLAGS.config, FLAGS.steps, benchmarks=FLAGS.benchmarks,
                                                 out_dir=FLAGS.out_dir, greedy=greedy)
        print(result.paths["table"].read_text(), end="")
        print(f"best checkpoint: step {result.best()[0]}; wrote {result.paths['table'].parent}")
        return
    out = experiment.evaluate(FLAGS.config, benchmarks=FLAGS.benchmarks, out_dir=FLAGS.out_dir, step=FLAGS.step,
                              greedy=greedy)
    print(out["table"], end="")
    if out["paper_average"] is not None:
        print(f"paper six-benchmark average: {100 * out['paper_average']:.1f}")
    print(f"wrote {out['paths']['summary'].parent}")


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main)
