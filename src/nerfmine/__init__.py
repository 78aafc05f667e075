"""nerfmine: Instant-NGP neural radiance fields with online hard sample mining.

Importing the package is cheap: it imports neither torch nor Triton (the modules that run a
field import torch; Triton is imported when a Triton kernel is first used), so that
``nerfmine --help`` answers at once.
"""

from nerfmine.errors import ConfigError, DataError, NerfmineError

__version__ = "0.2.0"

__all__ = ["ConfigError", "DataError", "NerfmineError", "__version__"]
