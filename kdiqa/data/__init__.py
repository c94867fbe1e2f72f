"""Datasets in their official formats, splits, image decoding and views; the embedded mini dataset."""
