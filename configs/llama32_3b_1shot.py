"""1-shot RLVR on pi1 with Llama-3.2-3B-Instruct (Llama 3 chat template).

    python launch/train.py --config=configs/llama32_3b_1shot.py --config.model.path=/path/to/Llama-3.2-3B-Instruct
"""

import os

from configs import qwen15b_1shot


def get_config(arg=None):
    c = qwen15b_1shot.get_config(arg)
    c.name = c.name.replace("qwen15b", "llama32_3b")
    c.model.path = os.environ.get("RLVR_JAX_LLAMA32_3B", "")  # Llama-3.2-3B-Instruct HF directory.
    # Training prompt as in the paper's verl run: the tokenizer's chat template applied to the user
    # message alone (the template then writes its own default system header with its dates).
    c.data.template = "chat_template"
    c.data.system_prompt = ""  # No Qwen system message: empty = the chat template's default.
    # Evaluation: the Qwen2.5-Math suite's fixed "llama" prompt (its own system header and dates).
    c.eval.template = "llama"
    # EOS only: Llama-3.2-Instruct's generation_config lists <|end_of_text|>, <|eom_id|> and
    # <|eot_id|>, so "eos" already ends a turn at <|eot_id|>.
    c.rollout.stop = "eos"
    c.rollout.sub_batch_size = 128
    c.actor.micro_batch_size = 4
    return c
