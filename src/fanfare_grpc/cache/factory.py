"""Choose the cache backend from settings."""

from __future__ import annotations

from fanfare_grpc.cache.memory import MemoryCache
from fanfare_grpc.cache.protocols import Cache
from fanfare_grpc.cache.redis import RedisCache
from fanfare_grpc.settings import Settings


def open_cache(settings: Settings) -> Cache:
    """Redis when ``FANFARE_REDIS_URL`` is set, else the in-process cache."""
    if settings.redis_url:
        return RedisCache.from_url(settings.redis_url, settings.redis_key_prefix)
    return MemoryCache()
