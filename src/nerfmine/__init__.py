"""nerfmine: Instant-NGP neural radiance fields with online hard sample mining.

Importing the package is cheap: torch is imported, Triton only when a Triton kernel is first used.
"""

from nerfmine.errors import ConfigError, DataError, NerfmineError

__version__ = "0.2.0"

__all__ = ["ConfigError", "DataError", "NerfmineError", "__version__"]
