"""Datasets in their official formats, splits, image decoding and views."""
from kdiqa.data.sample import SPLITS, IQASample, LoadedDataset

__all__ = ["SPLITS", "IQASample", "LoadedDataset"]
