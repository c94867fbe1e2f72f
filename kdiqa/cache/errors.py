"""The cache's one error type, so callers can tell a stale or unfinished cache from other user errors."""
from __future__ import annotations

from kdiqa.errors import KdiqaError


class CacheError(KdiqaError):
    """A cache file is incomplete, stale (fingerprint mismatch), unreadable or inconsistent."""
