"""Speed tricks of the training loop, each behind its own switch and exact or opt-in.

- :func:`first_token_last_layer` (``train.first_token_last_layer``): the last encoder layer computes only the
  token the head reads, in training and prediction (:func:`trim_switch` reads the param); the same loss, gradients,
  random draws and logits up to float rounding, on the stock classes where that is exact.
- :func:`fast_cpu_dropout` (``train.cpu_dropout: fast``, opt-in): CPU dropout masks from a faster kernel; same
  keep probability, other dropped units; falls back to torch's kernel where the private API it needs is missing.
"""

from .fast_dropout import fast_bernoulli_, fast_cpu_dropout
from .first_token import first_token_last_layer, trim_switch

__all__ = ["fast_bernoulli_", "fast_cpu_dropout", "first_token_last_layer", "trim_switch"]
