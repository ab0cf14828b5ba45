"""sklearn-relish: regression on raw text with a frozen LLM and a RELISH head.

The data flow, one module per step::

    text -> prompt       inputs.py
         -> backbone     backbone.py (bundled.py finds the offline default)
         -> token states cache.py (per text, in memory and on disk)
         -> head         head.py (plain torch), trained by skorch (training.py)
         -> number       estimator.py (RelishRegressor, the scikit-learn face)
"""

from .bundled import DEFAULT_BACKBONE
from .cache import cache_info, clear_cache
from .estimator import RelishRegressor
from .head import RelishHead

__version__ = "0.1.0"

__all__ = ["DEFAULT_BACKBONE", "RelishHead", "RelishRegressor", "__version__", "cache_info",
           "clear_cache"]
