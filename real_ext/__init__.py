"""real_ext: RLHF training with parameter reallocation (ReaL), compiled hot paths.

Importing the package loads the compiled extension, which registers every op
under ``torch.ops.real_ext``; ``real_ext.ops`` holds the typed Python wrappers.
"""
import torch  # noqa: F401  (the extension links against libtorch: load it first)

from real_ext import _C  # noqa: F401  (registers torch.ops.real_ext.*)
from real_ext import ops

__all__ = ["ops"]
__version__ = "0.1.0"
