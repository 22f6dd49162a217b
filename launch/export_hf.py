"""Export a training checkpoint's policy as an HF directory (config.json, safetensors, tokenizer files).

    python launch/export_hf.py --workdir=runs/qwen15b_1shot --out=/data/qwen15b_pi1 [--step=N] [--dtype=bfloat16]

transformers' `AutoModelForCausalLM.from_pretrained(out)` and vLLM load the result.
The work is `rlvr_jax.experiment.export_hf(workdir, out, step=, dtype=)`.
"""

from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Training run directory (config.json + checkpoints/).")
flags.DEFINE_string("out", None, "Output HF directory.")
flags.DEFINE_integer("step", None, "Checkpoint step; default the latest.")
flags.DEFINE_string("dtype", None, "Storage dtype of the exported tensors (e.g. bfloat16); default the params'.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    from rlvr_jax import experiment

    out = experiment.export_hf(FLAGS.workdir, FLAGS.out, step=FLAGS.step, dtype=FLAGS.dtype)
    print(f"wrote {out}")


if __name__ == "__main__":
    flags.mark_flags_as_required(["workdir", "out"])
    app.run(main)
