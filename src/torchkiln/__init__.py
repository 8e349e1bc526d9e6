"""torchkiln: PyTorch built from source for your GPU, inside Docker.

This file imports nothing: the in-image checks (`torchkiln.smoke`, `torchkiln.bench`) must run
with only the standard library and torch, and the task runner's start-up must stay fast.
"""

__version__ = "0.1.0"
