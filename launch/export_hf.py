"""Export a training checkpoint's policy as an HF directory (config.json, safetensors, tokenizer files).

    python launch/export_hf.py --workdir=runs/qwen15b_1shot --out=/data/qwen15b_pi1 [--step=N] [--dtype=bfloat16]

transformers' `AutoModelForCausalLM.from_pretrained(out)` and vLLM load the result.
"""

from __future__ import annotations

import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from absl import app, flags, logging  # noqa: E402

FLAGS = flags.FLAGS


def export(workdir, out, *, step: int | None = None, dtype: str | None = None) -> pathlib.Path:
    """Restores the policy params of `workdir` (latest or `step`) and writes them with `save_hf`."""
    import ml_collections

    from launch import builders
    from launch.eval import load_policy
    from rlvr_jax.models import save_hf

    workdir = pathlib.Path(workdir)
    run_file = workdir / "config.json"
    if not run_file.is_file():
        raise FileNotFoundError(f"{workdir}: no config.json (not a training run directory)")
    config = ml_collections.ConfigDict(json.loads(run_file.read_text()))
    config.model.path = str(workdir)
    policy = load_policy(config, builders.build_sharder(config), step)
    out = pathlib.Path(out)
    save_hf(out, policy.cfg, policy.params, dtype=dtype)
    policy.tokenizer.save_pretrained(str(out))
    return out


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    out = export(FLAGS.workdir, FLAGS.out, step=FLAGS.step, dtype=FLAGS.dtype)
    print(f"wrote {out}")


def _define_flags() -> None:
    # Defined only when run as a script, so importing `export` next to launch/train.py is safe.
    flags.DEFINE_string("workdir", None, "Training run directory (config.json + checkpoints/).")
    flags.DEFINE_string("out", None, "Output HF directory.")
    flags.DEFINE_integer("step", None, "Checkpoint step; default the latest.")
    flags.DEFINE_string("dtype", None, "Storage dtype of the exported tensors (e.g. bfloat16); default the params'.")
    flags.mark_flags_as_required(["workdir", "out"])


if __name__ == "__main__":
    _define_flags()
    app.run(main)
