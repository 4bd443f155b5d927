"""dopd-vlm: privileged on-policy distillation (DOPD, arXiv 2606.30626) for VLMs and LLMs.

Shape legend used across the package (tensor names carry their shapes):
  P prompts, G rollouts per prompt, B = P*G sequences, T prompt tokens, R response tokens,
  V vocabulary, K top-k, H hidden size.
"""

__version__ = "0.1.0"
