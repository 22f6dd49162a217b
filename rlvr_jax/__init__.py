"""rlvr_jax: reinforcement learning with verifiable rewards (RLVR) for language models in JAX.

Shape-letter glossary used in names across the package (e.g. ``logits_btv``, ``k_cache_lbskh``):

  b  batch (sequences)          t  query length (tokens in this call)
  s  key/value length (cache)   d  model (embed) width
  h  query heads                k  key/value heads
  g  query heads per kv head    e  head dim
  f  MLP hidden width           v  vocabulary
  l  layers                     n  samples per prompt
"""

__version__ = "0.1.0"
