"""The content-addressed cache that keeps a verified blob from being fetched again this interval."""

from __future__ import annotations

from layerwatch.check import BlobCache

KEY = ("https://a.example/p-core", "p-core/org/app", "sha256:" + "a" * 64)
OTHER_HOP = ("https://b.example/p-ghcr", "p-ghcr/org/app", KEY[2])


class FakeClock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


def test_a_blob_verified_at_a_hop_is_trusted_for_the_ttl_and_then_checked_again() -> None:
    clock = FakeClock()
    cache = BlobCache(ttl=300, clock=clock)
    assert not cache.fresh(KEY)
    cache.remember(KEY)
    assert cache.fresh(KEY)
    clock.now += 299.9
    assert cache.fresh(KEY)
    clock.now += 0.1
    assert not cache.fresh(KEY)
    clock.now -= 100  # even if the clock could go back, an expired entry is gone
    assert not cache.fresh(KEY)


def test_a_blob_verified_at_one_hop_is_not_trusted_at_another() -> None:
    cache = BlobCache(ttl=300, clock=FakeClock())
    cache.remember(KEY)
    assert not cache.fresh(OTHER_HOP)
    assert not cache.fresh((KEY[0], "p-core/other/app", KEY[2]))


def test_verifying_again_restarts_the_ttl() -> None:
    clock = FakeClock()
    cache = BlobCache(ttl=300, clock=clock)
    cache.remember(KEY)
    clock.now += 200
    cache.remember(KEY)
    clock.now += 200
    assert cache.fresh(KEY)


def test_pruning_drops_only_expired_entries() -> None:
    clock = FakeClock()
    cache = BlobCache(ttl=300, clock=clock)
    cache.remember(KEY)
    clock.now += 200
    cache.remember(OTHER_HOP)
    clock.now += 150
    cache.prune()
    assert not cache.fresh(KEY)
    assert cache.fresh(OTHER_HOP)
    clock.now += 150
    cache.prune()
    assert not cache.fresh(OTHER_HOP)


def test_a_zero_ttl_cache_trusts_nothing() -> None:
    cache = BlobCache(ttl=0, clock=FakeClock())
    cache.remember(KEY)
    assert not cache.fresh(KEY)
