"""The 1.2k baseline: GRPO on the 1,209-example DeepScaleR subset with Qwen2.5-Math-1.5B.

    python launch/train.py --config=configs/qwen15b_dsr_sub.py \
        --config.model.path=/path/to/Qwen2.5-Math-1.5B --config.data.train_path=/path/to/dsr_sub.parquet
"""

import os

from configs import qwen15b_1shot


def get_config(arg=None):
    c = qwen15b_1shot.get_config(arg)
    c.name = c.name.replace("1shot", "dsr_sub")
    c.data.train_path = os.environ.get("RLVR_JAX_DSR_SUB", "")  # verl parquet of the 1,209 examples.
    c.data.shuffle = True  # 128 distinct prompts per step, reshuffled every epoch.
    return c
