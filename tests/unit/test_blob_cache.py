"""The blob cache: shared between targets within one interval, never trusted by its own writer."""

from __future__ import annotations

from layerwatch.chain import Credentials
from layerwatch.check import BlobCache, credential_id
from layerwatch.registry.network import Endpoint

DIGEST = "sha256:" + "a" * 64
KEY = (Endpoint("https://a.example"), "p-core/org/app", DIGEST, "anonymous")
OTHER_HOP = (Endpoint("https://b.example"), "p-ghcr/org/app", DIGEST, "anonymous")
APP, OTHER_APP = ("team-a", "app"), ("team-b", "app")


class FakeClock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


def test_another_targets_verification_is_trusted_for_one_interval_and_then_not() -> None:
    clock = FakeClock()
    cache = BlobCache(ttl=300, clock=clock)
    assert not cache.trusted(KEY, OTHER_APP)
    cache.remember(KEY, APP)
    assert cache.trusted(KEY, OTHER_APP)
    clock.now += 299.9
    assert cache.trusted(KEY, OTHER_APP)
    clock.now += 0.1
    assert not cache.trusted(KEY, OTHER_APP)
    clock.now -= 100  # even if the clock could go back, an expired entry is gone
    assert not cache.trusted(KEY, OTHER_APP)


def test_a_target_never_trusts_what_its_own_previous_check_verified() -> None:
    cache = BlobCache(ttl=300, clock=FakeClock())
    cache.remember(KEY, APP)
    assert not cache.trusted(KEY, APP)


def test_a_blob_verified_at_one_hop_or_with_other_credentials_is_not_trusted_elsewhere() -> None:
    cache = BlobCache(ttl=300, clock=FakeClock())
    cache.remember(KEY, APP)
    assert not cache.trusted(OTHER_HOP, OTHER_APP)
    assert not cache.trusted((KEY[0], "p-core/other/app", DIGEST, "anonymous"), OTHER_APP)
    robot = credential_id(Credentials("robot", "secret"))
    assert not cache.trusted((*KEY[:3], robot), OTHER_APP)


def test_a_credential_identity_is_a_fingerprint_not_the_secret() -> None:
    identity = credential_id(Credentials("robot", "s3cret-password"))
    assert "s3cret" not in identity and "robot" not in identity
    assert identity != credential_id(Credentials("robot", "other"))
    assert credential_id(None) == "anonymous"


def test_pruning_drops_only_expired_entries() -> None:
    clock = FakeClock()
    cache = BlobCache(ttl=300, clock=clock)
    cache.remember(KEY, APP)
    clock.now += 200
    cache.remember(OTHER_HOP, APP)
    clock.now += 150
    cache.prune()
    assert not cache.trusted(KEY, OTHER_APP)
    assert cache.trusted(OTHER_HOP, OTHER_APP)
    clock.now += 150
    cache.prune()
    assert not cache.trusted(OTHER_HOP, OTHER_APP)


def test_a_zero_ttl_cache_trusts_nothing() -> None:
    cache = BlobCache(ttl=0, clock=FakeClock())
    cache.remember(KEY, APP)
    assert not cache.trusted(KEY, OTHER_APP)
