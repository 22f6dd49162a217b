"""rlvr_jax: reinforcement learning with verifiable rewards for language models, in JAX."""

from setuptools import find_packages, setup

# Runtime: torch is deliberately absent (it is only the test reference).
INSTALL_REQUIRES = [
    "jax>=0.7",
    "flax>=0.10",
    "optax>=0.2.4",
    "orbax-checkpoint>=0.11",
    "transformers>=4.45",  # tokenizers and chat templates only
    "jinja2>=3.1",  # transformers' apply_chat_template renders the template with it (not its own dependency)
    "tokenizers>=0.19",  # fast BPE tokenizers built directly (GGUF import, tiny test tokenizers)
    "safetensors>=0.4",
    "sympy>=1.12",
    "mpmath>=1.3",  # arbitrary-precision numeric comparison in the verifier
    "ml-collections>=1.0",
    "tensorboardX>=2.6",
    "numpy>=1.26",
    "ml-dtypes>=0.4",  # bfloat16 numpy dtype for safetensors I/O
    "absl-py>=2.0",
    "tqdm>=4.60",
    "filelock>=3.0",  # JAX's compilation cache locks its directory when it has a size cap (config.jax_cache_dir)
    "pyarrow>=14",  # verl parquet datasets
    "gguf>=0.10",  # GGUF import (dequantisation in numpy)
    "math-verify>=0.7",  # LaTeX -> sympy parsing for the reward verifier
    "latex2sympy2_extended>=1.0",  # imported directly by the verifier (math-verify's parser)
]

setup(
    name="rlvr_jax",
    version="0.1.0",
    description="1-shot RLVR (GRPO / PPO with verifiable rewards) for LLMs in JAX/Flax",
    # `configs` too: `from configs import tiny` works in a notebook after `pip install -e .`.
    packages=find_packages(include=["rlvr_jax", "rlvr_jax.*", "configs"]),
    # The paper's six evaluation sets (~2 MB, MIT; provenance in rlvr_jax/evaluation/data/README.md).
    package_data={"rlvr_jax.data.builtin": ["*.jsonl"],
                  "rlvr_jax.evaluation": ["data/*/test.jsonl", "data/README.md", "data/LICENSE"]},
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require={
        # torch 2.13.0 CPU is the reference implementation in tests (pinned: the machine holds it).
        # matplotlib: the demo's end-to-end test saves its curves PNG; wandb: the logger's offline tests.
        # pytest-xdist: CI runs the suite on two workers (compiles are single-threaded; docs/testing.md).
        # accelerate: transformers needs it to load a GGUF itself (the reference reader of the SmolLM2 file).
        "test": ["pytest>=8", "pytest-xdist>=3", "torch==2.13.0", "matplotlib>=3.7", "wandb>=0.17", "accelerate>=1.0"],
        "wandb": ["wandb>=0.17"],  # trainer.loggers = (..., "wandb")
        "demo": ["matplotlib>=3.7"],
        "cuda": ["jax[cuda12]"],
        "tpu": ["jax[tpu]"],
    },
)
