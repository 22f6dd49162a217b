"""rlvr_jax: reinforcement learning with verifiable rewards for language models, in JAX."""

from setuptools import find_packages, setup

# Runtime: torch is deliberately absent (it is only the test reference).
INSTALL_REQUIRES = [
    "jax>=0.7",
    "flax>=0.10",
    "optax>=0.2.4",
    "orbax-checkpoint>=0.11",
    "transformers>=4.45",  # tokenizers and chat templates only
    "safetensors>=0.4",
    "sympy>=1.12",
    "ml-collections>=1.0",
    "tensorboardX>=2.6",
    "numpy>=1.26",
    "absl-py>=2.0",
    "tqdm>=4.60",
    "pyarrow>=14",  # verl parquet datasets
    "gguf>=0.10",  # GGUF import (dequantisation in numpy)
    "math-verify>=0.7",  # LaTeX -> sympy parsing for the reward verifier
]

setup(
    name="rlvr_jax",
    version="0.1.0",
    description="1-shot RLVR (GRPO / PPO with verifiable rewards) for LLMs in JAX/Flax",
    # `configs` too: `from configs import tiny` works in a notebook after `pip install -e .`.
    packages=find_packages(include=["rlvr_jax", "rlvr_jax.*", "configs"]),
    package_data={"rlvr_jax.data.builtin": ["*.jsonl"]},
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require={
        # torch 2.13.0 CPU is the reference implementation in tests (pinned: the machine holds it).
        # matplotlib: the demo's end-to-end test saves its curves PNG.
        "test": ["pytest>=8", "torch==2.13.0", "matplotlib>=3.7"],
        "demo": ["matplotlib>=3.7"],
        "cuda": ["jax[cuda12]"],
        "tpu": ["jax[tpu]"],
    },
)
