"""The feature cache: teacher outputs computed once per (image, view), stored in HDF5, replayed exactly.

- :func:`build_cache` writes a cache as a :class:`CacheSpec` describes it (resumable, shardable, fingerprinted);
- :class:`CachedViews` reads it as a torch Dataset of the same views plus the teacher's targets;
- :func:`merge_shards` joins shard files through virtual datasets;
- :func:`cache_info` / :func:`format_cache_info` describe a cache;
- :func:`teacher_targets` turns a teacher's output into targets, for the cache and for online distillation;
- feature maps are stored as float16, float32 or int8 (:mod:`.quantize`: a scale and zero point per view
  and channel), from a teacher run in fp32 or under bf16/fp16 autocast (:mod:`.precision`).

Views, not images, are cached: a teacher's target for one random crop is a wrong target for another, so
the student must see the very view the teacher saw. A view is stored as its parameters (crop box, flip,
seed; :class:`kdiqa.data.views.ViewParams`) beside the teacher's outputs, and the reader renders it again
from the image, bit for bit; storing the rendered pixels instead would cost far more disk and tie the
cache to one input size.
"""
from kdiqa.cache.errors import CacheError
from kdiqa.cache.fingerprint import dataset_fingerprint, targets_fingerprint, teacher_fingerprint, view_fingerprint
from kdiqa.cache.info import cache_info, format_cache_info
from kdiqa.cache.layout import partial_path, shard_path
from kdiqa.cache.plan import CachePlan, draw_view
from kdiqa.cache.reader import CachedViews
from kdiqa.cache.shards import merge_shards
from kdiqa.cache.spec import CacheSpec
from kdiqa.cache.status import require_complete
from kdiqa.cache.targets import teacher_targets
from kdiqa.cache.writer import build_cache

__all__ = [
    "CacheError", "CachePlan", "CacheSpec", "CachedViews", "build_cache", "cache_info", "dataset_fingerprint",
    "draw_view", "format_cache_info", "merge_shards", "partial_path", "require_complete", "shard_path",
    "targets_fingerprint", "teacher_fingerprint", "teacher_targets", "view_fingerprint",
]
