"""The paper's main run: 1-shot RLVR (GRPO + entropy bonus) on pi1 with Qwen2.5-Math-1.5B.

    python launch/train.py --config=configs/qwen15b_1shot.py --config.model.path=/path/to/Qwen2.5-Math-1.5B

Variants: `configs/qwen15b_1shot.py:algo=ppo`, `:reward=none` (entropy loss only), `:entropy=0`,
`:example=pi13`, `:runlocal` (tiny shapes to smoke-test the recipe).
Weights are never downloaded at run time: fetch the HF checkpoint once (e.g. `huggingface-cli download
Qwen/Qwen2.5-Math-1.5B --local-dir DIR`) and pass its directory, or set RLVR_JAX_QWEN15B.
"""

import os

from configs import common


def get_config(arg=None):
    c = common.base_config()
    c.name = "qwen15b_1shot"
    c.model.path = os.environ.get("RLVR_JAX_QWEN15B", "")  # Qwen2.5-Math-1.5B HF directory.
    # The paper (verl): 128 prompt rows of pi1, n = 8, temperature 0.6, prompt <= 1024, response <= 3072,
    # lr 1e-6 constant, one update per step, KL (low_var_kl) 0.001, entropy 0.001, clip 0.2, token-mean.
    c.trainer.batch_size = 128
    c.rollout.n = 8
    c.rollout.temperature = 0.6
    c.rollout.top_p = 1.0
    c.data.max_prompt_len = 1024
    c.rollout.max_new_tokens = 3072
    c.actor.lr = 1e-6
    c.actor.mini_batch_size = 0
    c.trainer.total_steps = 2000
    c.trainer.save_every = 20
    c.trainer.eval_every = 20
    c.trainer.eval_before_train = True
    c.eval.benchmarks = ("math500",)
    # Paper fidelity (docs/paper_fidelity.md): rollouts stop at the model's EOS only, as vLLM does in
    # the paper's verl run (<|endoftext|> for base Qwen2.5-Math); validation in training scores
    # like its DeepScaleR reward (a box is required); reported evaluations use the Qwen2.5-Math
    # suite's protocol (qwen_math_cot prompt, <|im_end|> / <|endoftext|> stops, grader="paper").
    c.rollout.stop = "eos"
    c.eval.require_box = True
    c.eval.stop = "eos+chat"
    return common.apply_recipe_variant(c, arg)
