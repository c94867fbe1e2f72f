"""The feature cache: teacher outputs computed once per (image, view), stored in HDF5, replayed exactly.

- :func:`build_cache` writes a cache (resumable, shardable, fingerprinted);
- :class:`CachedViews` reads it as a torch Dataset of the same views plus the teacher's targets;
- :func:`merge_shards` joins shard files through virtual datasets;
- :func:`cache_info` / :func:`format_cache_info` describe a cache.

See DESIGN.md, "The feature cache (HDF5)", for why views rather than images are cached.
"""
from kdiqa.cache.errors import CacheError
from kdiqa.cache.fingerprint import (
    compute_fingerprints,
    dataset_fingerprint,
    targets_fingerprint,
    teacher_fingerprint,
    view_fingerprint,
)
from kdiqa.cache.info import cache_info, format_cache_info
from kdiqa.cache.layout import partial_path, shard_path
from kdiqa.cache.plan import CachePlan, draw_view
from kdiqa.cache.reader import CachedViews
from kdiqa.cache.shards import merge_shards
from kdiqa.cache.status import require_complete
from kdiqa.cache.writer import build_cache

__all__ = [
    "CacheError",
    "CachePlan",
    "CachedViews",
    "build_cache",
    "cache_info",
    "compute_fingerprints",
    "dataset_fingerprint",
    "draw_view",
    "format_cache_info",
    "merge_shards",
    "partial_path",
    "require_complete",
    "shard_path",
    "targets_fingerprint",
    "teacher_fingerprint",
    "view_fingerprint",
]
