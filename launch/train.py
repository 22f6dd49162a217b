"""Train a policy with RLVR (GRPO / PPO + entropy bonus): flags, distributed init, one library call.

    python launch/train.py --config=configs/qwen15b_1shot.py --config.model.path=/path/to/Qwen2.5-Math-1.5B
    python launch/train.py --config=configs/tiny.py                      # seconds per step on CPU
    python launch/train.py --config=configs/qwen15b_1shot.py:algo=ppo    # a recipe variant

A run started again with the same --workdir resumes from its latest checkpoint. Multi-process runs:
every process runs this same command with --coordinator_address, --num_processes and --process_id
(or --distributed on TPU pods); process 0 writes config, metrics and samples. On a CPU-only machine
XLA runs one device over every core (docs/accelerators.md says why not one device per core).
The work is `rlvr_jax.experiment.train(config, workdir)`.
"""

import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # `configs` from a checkout.

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a config file (optionally file.py:variant).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Output directory; default ./runs/<config.name>.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 for multi-process runs.")
flags.DEFINE_integer("num_processes", None, "Number of processes in a multi-process run.")
flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() with auto-detection (TPU pods).")
flags.DEFINE_bool("dry_run", False, "Print the memory plan (shapes, shardings, bytes per device) and exit.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # Orbax logs every checkpoint file at INFO.
    from rlvr_jax import distributed, experiment

    # Validated before joining other processes, so a bad config fails alone.
    experiment.validate(FLAGS.config, need_weights=not FLAGS.dry_run)
    if FLAGS.coordinator_address and (FLAGS.num_processes is None or FLAGS.process_id is None):
        raise app.UsageError("--coordinator_address needs --num_processes and --process_id")
    distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
                           auto=FLAGS.distributed)
    if FLAGS.dry_run:
        experiment.print_memory_plan(FLAGS.config)
        return
    from rlvr_jax.training.rl_loop import NonFiniteError

    try:
        experiment.train(FLAGS.config, FLAGS.workdir or os.path.join("runs", FLAGS.config.name))
    except NonFiniteError as e:  # A clear message and a non-zero exit, not a traceback.
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main)
