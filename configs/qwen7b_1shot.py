"""1-shot RLVR on pi1 with Qwen2.5-Math-7B (the paper's 7B run; same recipe as the 1.5B).

    python launch/train.py --config=configs/qwen7b_1shot.py --config.model.path=/path/to/Qwen2.5-Math-7B
"""

import os

from configs import qwen15b_1shot


def get_config(arg=None):
    c = qwen15b_1shot.get_config(arg)
    c.name = c.name.replace("qwen15b", "qwen7b")
    c.model.path = os.environ.get("RLVR_JAX_QWEN7B", "")  # Qwen2.5-Math-7B HF directory.
    c.mesh.shape = (1, -1, 1)  # FSDP over every device: 7B fp32 master + AdamW is ~112 GB.
    c.rollout.sub_batch_size = 128  # Larger KV cache per sequence than 1.5B.
    c.actor.micro_batch_size = 4
    return c
