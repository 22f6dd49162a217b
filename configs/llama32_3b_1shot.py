"""1-shot RLVR on pi1 with Llama-3.2-3B-Instruct (Llama 3 chat template).

    python launch/train.py --config=configs/llama32_3b_1shot.py --config.model.path=/path/to/Llama-3.2-3B-Instruct
"""

import os

from configs import qwen15b_1shot


def get_config(arg=None):
    c = qwen15b_1shot.get_config(arg)
    c.name = c.name.replace("qwen15b", "llama32_3b")
    c.model.path = os.environ.get("RLVR_JAX_LLAMA32_3B", "")  # Llama-3.2-3B-Instruct HF directory.
    c.data.template = "chat_template"  # The tokenizer's Llama 3 template (header ids, <|eot_id|>).
    c.eval.template = "chat_template"  # Instruct model: validation through its chat template too.
    c.rollout.sub_batch_size = 128
    c.actor.micro_batch_size = 4
    return c
