"""1-shot RLVR (GRPO + entropy bonus) on pi1 with Qwen3-1.7B-Base: the paper's hyper-parameters.

    python launch/train.py --config=configs/qwen3_1p7b_1shot.py --config.model.path=/path/to/Qwen3-1.7B-Base

Variants as every recipe (`:algo=ppo`, `:reward=none`, `:entropy=0`, `:example=pi13`, `:runlocal`).
Weights are never downloaded at run time: fetch the checkpoint once (`huggingface-cli download
Qwen/Qwen3-1.7B-Base --local-dir DIR`) and pass its directory, or set RLVR_JAX_QWEN3_1P7B.
`launch/train.py --dry_run` plans memory from the Qwen3-1.7B preset when no checkpoint is on disk.
"""

import os

from configs import qwen15b_1shot


def get_config(arg=None):
    # Same run as the paper's Qwen2.5-Math-1.5B recipe: 128 rows of pi1, n = 8, temperature 0.6,
    # prompt <= 1024, response <= 3072, lr 1e-6, KL 0.001 (low_var_kl), entropy 0.001, clip 0.2.
    c = qwen15b_1shot.get_config(arg)
    c.name = c.name.replace("qwen15b", "qwen3_1p7b", 1)
    c.model.path = os.environ.get("RLVR_JAX_QWEN3_1P7B", "")  # Qwen3-1.7B-Base HF directory.
    # Training prompts go through the tokenizer's own (Qwen3 ChatML) chat template with the paper's
    # system message; validation keeps the paper's fixed qwen_math_cot prompt, comparable across models.
    c.data.template = "chat_template"
    c.eval.template = "qwen_math_cot"
    # Qwen3 keeps 8 kv heads of 128 (Qwen2.5-Math-1.5B: 2): a quarter of the sub-batch holds the same
    # KV-cache bytes as the Qwen2.5 recipe's 256.
    c.rollout.sub_batch_size = 64
    return c
