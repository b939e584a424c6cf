"""Adapters from each benchmark's original annotation files to the unified schema.

One module per dataset family; `c2f_lib.data.registry` maps dataset names to these loaders.
"""
from c2f_lib.data.adapters.base import CleaningReport, DatasetFormatError, LoadedSplit, clean_window

__all__ = ["CleaningReport", "DatasetFormatError", "LoadedSplit", "clean_window"]
