"""Loaders for IQA datasets in their publishers' own formats.

Importing this package registers every loader in :data:`kdiqa.registry.DATASETS`; each is called
as ``loader(root, *, on_bad_row="error", **options)`` and returns a
:class:`~kdiqa.data.sample.LoadedDataset`.
"""

from kdiqa.data.formats import agiqa3k, ava, csv_generic, kadid10k, koniq10k, livec, spaq, tad66k

__all__ = ["agiqa3k", "ava", "csv_generic", "kadid10k", "koniq10k", "livec", "spaq", "tad66k"]
