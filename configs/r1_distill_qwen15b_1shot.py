"""1-shot RLVR on pi1 with DeepSeek-R1-Distill-Qwen-1.5B (Qwen2 architecture).

    python launch/train.py --config=configs/r1_distill_qwen15b_1shot.py --config.model.path=/path/to/model
"""

import os

from configs import qwen15b_1shot


def get_config(arg=None):
    c = qwen15b_1shot.get_config(arg)
    c.name = c.name.replace("qwen15b", "r1_distill_qwen15b")
    c.model.path = os.environ.get("RLVR_JAX_R1_DISTILL_15B", "")  # DeepSeek-R1-Distill-Qwen-1.5B HF directory.
    # R1-distilled models think at length inside <think>...</think>; 3,072 tokens truncates most traces.
    c.rollout.max_new_tokens = 8192
    c.eval.max_new_tokens = 8192
    # Its chat template has no system turn; the instruction stays in the user message (the parquet's).
    c.data.system_prompt = ""
    c.rollout.sub_batch_size = 128
    # Evaluation as the paper's R1-Distill results (its README; rllm / DeepScaleR protocol): the
    # suite's "deepseek-distill" prompt (<think> opened), temperature 0.6, top-p 0.95, avg@16, 8k
    # tokens, for every benchmark (the README's AIME / AMC columns are avg@64: --config.eval.n=64).
    c.eval.template = "deepseek_distill"
    c.eval.greedy = False
    c.eval.temperature = 0.6
    c.eval.top_p = 0.95
    c.eval.n = 16
    return c
