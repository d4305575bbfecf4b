"""Datasets as plug-ins.

Importing this package or a dataset plug-in imports neither numpy nor torch: the API server
imports the plug-ins only to validate specs and to describe them in its catalog.
"""

from nas.data.base import Dataset, DataSplits, ValidationSplit, validation_split

__all__ = ["DataSplits", "Dataset", "ValidationSplit", "validation_split"]
