"""Sparsifiers and the mask machinery they share.

Importing this package (or a sparsifier plug-in) does not import torch; the torch code lives in
:mod:`nas.sparse.masks`, :mod:`nas.sparse.stats` and :mod:`nas.sparse.serialization`, which the
plug-ins import when they run.
"""

from nas.sparse.base import Sparsifier, WeightSpec

__all__ = ["Sparsifier", "WeightSpec"]
