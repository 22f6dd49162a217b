"""A random tiny Qwen2-shaped model with the built-in byte tokenizer: seconds per step on CPU.

    python launch/train.py --config=configs/tiny.py

For tests and debugging the loop; it learns nothing useful (random weights, byte vocabulary).
"""

from configs import common


def get_config(arg=None):
    c = common.base_config()
    c.name = "tiny"
    c.model.source = "random"  # Random init from model.arch; nothing to download.
    c.model.tokenizer_path = "builtin:bytes"  # 259 byte-level tokens incl. ChatML specials.
    c.model.arch.vocab_size = 320  # >= 259 tokenizer ids, rounded up.
    c.model.dtype = "float32"  # CPU: fp32 compute is both faster and exact.
    c.model.ref_dtype = "float32"
    c.model.remat = "none"
    c.mesh.shape = (1, -1, 1)
    c.data.max_prompt_len = 512
    c.rollout.n = 2
    c.rollout.temperature = 1.0
    c.rollout.max_new_tokens = 16
    c.rollout.sub_batch_size = 0
    c.rollout.stop = "eos+chat"  # The byte tokenizer's <|im_end|> and <|endoftext|> both end a row.
    c.actor.lr = 1e-3
    c.actor.micro_batch_size = 2
    c.reward.num_workers = 1
    c.trainer.batch_size = 2
    c.trainer.total_steps = 3
    c.trainer.save_every = 2
    c.trainer.eval_every = 2
    c.trainer.log_samples = 2
    c.eval.benchmarks = ()  # Set a jsonl path (e.g. --config.eval.benchmarks=...) to validate.
    c.eval.max_new_tokens = 16
    c.eval.batch_size = 4
    return common.apply_recipe_variant(c, arg)
