"""Signature verdicts per hop: what a hop lacking, damaging or hiding a signature is told (no network)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.unit.builders import CHAIN, digest_of, healthy_chain, observe, oci_repository

from layerwatch.chain import ChainError, chain_from_spec, target_from_document
from layerwatch.kube.targets import FluxSource, select
from layerwatch.observation import BlobStatus, HopObservation
from layerwatch.signatures import (
    Provider,
    ReferrersApi,
    SignatureCheck,
    SignatureObservation,
    parse_verify,
    referrers_tag,
    sig_tag,
    signatures_json,
)
from layerwatch.verdict import Verdict, judge

SUBJECT = digest_of("subject")
BUNDLE = SignatureCheck("cosign bundle", digest_of("b1"), digest_of("b1"), "referrers API", BlobStatus.OK)
SIG = SignatureCheck(
    "cosign signature", f"{digest_of('payload')}/abc", digest_of("sigm"), "tag s.sig layer 0", BlobStatus.OK
)
VIA_TAG = dataclasses.replace(BUNDLE, found_via=f"tag {referrers_tag(SUBJECT)}")


def signed(
    observation: HopObservation,
    *checks: SignatureCheck,
    api: ReferrersApi = ReferrersApi.OK,
    provider: Provider = Provider.COSIGN,
) -> HopObservation:
    return dataclasses.replace(observation, signatures=SignatureObservation(provider, SUBJECT, api, checks))


def chain_with(edge: tuple[Any, ...], core: tuple[Any, ...], origin: tuple[Any, ...]) -> list[HopObservation]:
    """Edge, core and origin with the given signature checks (a leading ReferrersApi sets the API)."""
    hops = []
    for observation, checks in zip(healthy_chain(), (edge, core, origin), strict=True):
        api = checks[0] if checks and isinstance(checks[0], ReferrersApi) else ReferrersApi.OK
        hops.append(signed(observation, *(c for c in checks if isinstance(c, SignatureCheck)), api=api))
    return hops


def verdicts(observations: list[HopObservation]) -> list[Verdict]:
    return [hop.verdict for hop in judge(observations).hops]


def test_without_verify_signatures_are_never_judged() -> None:
    judgement = judge(healthy_chain())
    assert judgement.verdict is Verdict.HEALTHY
    assert "signatures" not in judgement.message


def test_signed_everywhere_is_healthy_and_says_how_many_signatures() -> None:
    judgement = judge(chain_with((BUNDLE, SIG), (BUNDLE, SIG), (BUNDLE, SIG)))
    assert verdicts(chain_with((BUNDLE, SIG), (BUNDLE, SIG), (BUNDLE, SIG))) == [Verdict.HEALTHY] * 3
    assert judgement.message.endswith("2 signatures")


def test_an_unsigned_origin_is_missing_everywhere_and_blamed() -> None:
    judgement = judge(chain_with((), (), ()))
    assert [h.verdict for h in judgement.hops] == [Verdict.SIGNATURE_MISSING] * 3
    assert judgement.blame == "origin"
    assert f"no tag {sig_tag(SUBJECT)}" in judgement.message
    assert "Flux's verification would fail" in judgement.message


def test_a_hop_that_lost_the_sig_tag_is_blamed_and_passes_it_on() -> None:
    judgement = judge(chain_with((), (), (SIG,)))
    assert [h.verdict for h in judgement.hops] == [Verdict.SIGNATURE_MISSING] * 2 + [Verdict.HEALTHY]
    assert judgement.blame == "core"
    assert "cosign signature" in judgement.message and "not found here" in judgement.message


def test_losing_one_of_two_signatures_counts_them() -> None:
    judgement = judge(chain_with((BUNDLE,), (BUNDLE,), (BUNDLE, SIG)))
    assert judgement.verdict is Verdict.SIGNATURE_MISSING
    assert "1 of the 2 signatures at origin missing" in judgement.message


def test_a_corrupt_signature_blob_is_signature_corrupt() -> None:
    damaged = dataclasses.replace(SIG, status=BlobStatus.CORRUPT, detail="layer 0 sha256:x corrupt (hash)")
    judgement = judge(chain_with((damaged,), (damaged,), (SIG,)))
    assert [h.verdict for h in judgement.hops] == [Verdict.SIGNATURE_CORRUPT] * 2 + [Verdict.HEALTHY]
    assert judgement.blame == "core" and "corrupt" in judgement.message


def test_a_corrupt_sig_manifest_counts_for_every_signature_it_holds() -> None:
    broken = SignatureCheck(
        "cosign signature", "s.sig manifest", SIG.manifest, "tag s.sig", BlobStatus.CORRUPT
    )
    assert verdicts(chain_with((broken,), (SIG,), (SIG,)))[0] is Verdict.SIGNATURE_CORRUPT


def test_missing_wins_over_corrupt_at_the_same_hop() -> None:
    damaged = dataclasses.replace(BUNDLE, status=BlobStatus.CORRUPT, detail="bad")
    assert verdicts(chain_with((damaged,), (damaged,), (BUNDLE, SIG)))[0] is Verdict.SIGNATURE_MISSING


def test_hidden_referrers_api_without_the_tag_names_the_harbor_setting() -> None:
    judgement = judge(chain_with((ReferrersApi.ABSENT,), (ReferrersApi.ABSENT,), (BUNDLE,)))
    assert judgement.blame == "core"
    assert "the referrers API answers 404 here but works at origin" in judgement.message
    assert "proxy_referrer_api" in judgement.message
    assert judgement.notes == ()


def test_a_referrers_api_that_does_not_list_the_bundle_names_the_harbor_setting_too() -> None:
    judgement = judge(chain_with((), (), (BUNDLE,)))
    assert judgement.blame == "core"
    assert "the referrers API here does not list it" in judgement.message
    assert "proxy_referrer_api" in judgement.message


def test_the_referrers_hint_says_what_a_harbor_release_does_not_a_setting_no_release_has() -> None:
    """Harbor up to v2.15.2 never forwards the referrers API: no setting to turn on, only a pull by digest."""
    message = judge(chain_with((), (), (BUNDLE,))).message
    assert "answers the referrers API only from what it has cached and never asks its upstream" in message
    assert "about 20 s after something pulled it by digest through this hop" in message
    assert "exists only on Harbor's main, in no release up to v2.15.2" in message
    assert "2.16" not in message


def test_an_empty_referrers_api_gets_the_hint_when_the_origin_has_only_the_referrers_tag() -> None:
    """The lab's origin has no referrers API; a Harbor hop answers its own API 200 with nothing in it."""
    judgement = judge(chain_with((), (), (ReferrersApi.ABSENT, VIA_TAG)))
    assert judgement.blame == "core"
    for hop in judgement.hops[:2]:
        assert hop.verdict is Verdict.SIGNATURE_MISSING
        assert "the referrers API here does not list it" in hop.message
        assert "answers the referrers API only from what it has cached" in hop.message


def test_a_hop_without_the_referrers_tag_gets_no_hint_when_no_hop_has_a_referrers_api() -> None:
    """Absent everywhere: the tag is simply missing, nothing about a referrers API to say."""
    message = judge(
        chain_with((ReferrersApi.ABSENT,), (ReferrersApi.ABSENT,), (ReferrersApi.ABSENT, VIA_TAG))
    ).message
    assert "referrers API" not in message and "Harbor" not in message


def test_a_lost_sig_tag_gets_no_referrers_hint() -> None:
    assert "referrers API" not in judge(chain_with((), (), (SIG,))).message


def test_hidden_referrers_api_saved_by_the_tag_is_healthy_with_a_note() -> None:
    judgement = judge(chain_with((BUNDLE,), (ReferrersApi.ABSENT, VIA_TAG), (BUNDLE,)))
    assert judgement.verdict is Verdict.HEALTHY
    assert len(judgement.notes) == 1 and judgement.notes[0].startswith(
        "hop core: the referrers API answers 404"
    )


def test_no_note_when_the_origin_has_no_referrers_api_either() -> None:
    judgement = judge(
        chain_with(
            (ReferrersApi.ABSENT, VIA_TAG), (ReferrersApi.ABSENT, VIA_TAG), (ReferrersApi.ABSENT, VIA_TAG)
        )
    )
    assert judgement.verdict is Verdict.HEALTHY and judgement.notes == ()


def test_layer_verdicts_come_before_signature_verdicts() -> None:
    observations = chain_with((), (), (SIG,))
    observations[1] = dataclasses.replace(
        observe(1, blobs={0: (BlobStatus.MISSING, "missing (404)")}), signatures=observations[1].signatures
    )
    assert verdicts(observations)[1] is Verdict.LAYER_MISSING


def test_a_hop_is_compared_with_the_nearest_upstream_when_the_origin_was_not_checked() -> None:
    observations = chain_with((), (SIG,), ())
    observations[2] = dataclasses.replace(observations[2], signatures=None, manifests=())
    assert verdicts(observations)[:2] == [Verdict.SIGNATURE_MISSING, Verdict.HEALTHY]


def test_with_a_key_a_signature_made_with_another_key_counts_as_missing() -> None:
    stranger = dataclasses.replace(SIG, trusted=False, detail="does not verify with the given key")
    judgement = judge(chain_with((stranger,), (stranger,), (stranger,)))
    assert [h.verdict for h in judgement.hops] == [Verdict.SIGNATURE_MISSING] * 3
    assert judgement.blame == "origin" and "does not verify with the given key" in judgement.message
    trusted = dataclasses.replace(SIG, trusted=True)
    assert judge(chain_with((trusted,), (trusted,), (stranger, trusted))).verdict is Verdict.HEALTHY
    observation = SignatureObservation(Provider.COSIGN, SUBJECT, ReferrersApi.OK, (trusted,))
    document = signatures_json(observation)
    assert document is not None and document["signatures"][0]["trusted"] is True


def test_signature_verdicts_are_unhealthy() -> None:
    assert Verdict.SIGNATURE_MISSING.health.name == Verdict.SIGNATURE_CORRUPT.health.name == "UNHEALTHY"


def test_tag_names_follow_cosign_and_the_referrers_tag_schema() -> None:
    assert sig_tag("sha256:abc") == "sha256-abc.sig"
    assert referrers_tag("sha256:abc") == "sha256-abc"


def test_report_json_lists_signatures_per_hop() -> None:
    damaged = dataclasses.replace(SIG, status=BlobStatus.CORRUPT, detail="bad")
    observation = SignatureObservation(Provider.COSIGN, SUBJECT, ReferrersApi.ABSENT, (damaged,))
    assert signatures_json(observation) == {
        "provider": "cosign",
        "subject": SUBJECT,
        "referrersApi": "absent",
        "signatures": [
            {
                "kind": "cosign signature",
                "manifestDigest": SIG.manifest,
                "foundVia": "tag s.sig layer 0",
                "status": "corrupt",
                "bytesVerified": 0,
                "detail": "bad",
            }
        ],
    }
    assert signatures_json(None) is None


# -- where verify comes from ----------------------------------------------------------------------


@given(st.sampled_from(["cosign", "notation"]), st.dictionaries(st.text(max_size=5), st.text(max_size=5)))
def test_verify_names_its_provider(provider: str, other: dict[str, str]) -> None:
    assert parse_verify({**other, "provider": provider}, "x") is Provider(provider)


@given(st.text(max_size=12).filter(lambda p: p not in ("cosign", "notation")))
def test_an_unknown_provider_is_refused_in_one_line(provider: str) -> None:
    with pytest.raises(ValueError, match=r"verify\.provider must be cosign or notation") as caught:
        parse_verify({"provider": provider}, "target t")
    assert "\n" not in str(caught.value) and str(caught.value).startswith("target t:")


@given(st.one_of(st.text(), st.integers(), st.lists(st.integers()), st.booleans()))
def test_verify_that_is_not_a_mapping_is_refused(value: object) -> None:
    with pytest.raises(ValueError, match="verify must be a mapping"):
        parse_verify(value, "chain c")


def test_verify_without_provider_means_cosign_as_in_flux() -> None:
    assert parse_verify({}, "x") is Provider.COSIGN
    assert parse_verify(None, "x") is None


def test_chains_and_targets_opt_in() -> None:
    spec = {"hops": [{"name": "o", "url": "https://ghcr.io"}], "verify": {"provider": "notation"}}
    assert chain_from_spec("c", spec).verify is Provider.NOTATION
    assert chain_from_spec("c", {"hops": spec["hops"]}).verify is None
    target = target_from_document(
        {
            "kind": "Target",
            "metadata": {"name": "t"},
            "spec": {"url": "oci://ghcr.io/o/a", "verify": {"provider": "cosign"}},
        }
    )
    assert target.verify is Provider.COSIGN
    with pytest.raises(ChainError, match=r"chain c: verify\.provider"):
        chain_from_spec("c", {**spec, "verify": {"provider": "gpg"}})


def test_a_typo_inside_verify_is_refused_with_a_suggestion() -> None:
    hops = [{"name": "o", "url": "https://ghcr.io"}]
    with pytest.raises(
        ChainError, match=r"chain c: verify: unknown key 'provder' \(did you mean 'provider'\?\)"
    ):
        chain_from_spec("c", {"hops": hops, "verify": {"provder": "cosign"}})
    with pytest.raises(ChainError, match=r"target t: verify: unknown key 'secretRef'"):
        target_from_document(
            {"kind": "Target", "name": "t", "url": "oci://ghcr.io/o/a", "verify": {"secretRef": {}}}
        )


def test_an_ocirepository_with_spec_verify_becomes_a_target_that_checks_signatures() -> None:
    verify = {"provider": "notation", "secretRef": {"name": "trust"}}
    selection = select(FluxSource.from_body(oci_repository(spec={"verify": verify})), [CHAIN], None)
    assert selection.target is not None and selection.target.verify is Provider.NOTATION
    cosign = select(FluxSource.from_body(oci_repository(spec={"verify": {}})), [CHAIN], None)
    assert cosign.target is not None and cosign.target.verify is Provider.COSIGN
    plain = select(FluxSource.from_body(oci_repository()), [CHAIN], None)
    assert plain.target is not None and plain.target.verify is None
