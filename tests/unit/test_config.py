"""Chain and serve config files, as the CLI and `layerwatch serve` read them."""

from __future__ import annotations

import base64
import json
import tempfile
import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lab.certs import TestCA
from layerwatch.chain import ChainError, Credentials, Mode, check_keys
from layerwatch.config import (
    HOP_KEYS,
    FileSettings,
    chain_from_hop_flags,
    direct_hop_options,
    load_chain_file,
    load_serve_config,
    load_targets_file,
)

CHAIN = """\
apiVersion: layerwatch.io/v1alpha1
kind: ProxyChain
metadata: {name: corp}
spec:
  interval: 10m
  mode: head
  hops:
  - name: edge
    url: https://a.example/p-core
    username: robot$edge
    password: edge-secret
    caFile: certs/ca.crt
  - name: core
    url: https://b.example/p-ghcr
    dockerConfig: docker/config.json
    insecureSkipTLSVerify: true
  - name: origin
    url: https://ghcr.io
"""
with tempfile.TemporaryDirectory() as _directory:
    CA = TestCA(Path(_directory)).path.read_text()


@pytest.fixture(autouse=True)
def no_personal_docker_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Never read the developer's own ~/.docker/config.json."""
    home = tmp_path / "docker-home"
    home.mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(home))
    return home


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def docker_config(path: Path, auths: dict[str, tuple[str, str]]) -> Path:
    entries = {
        host: {"auth": base64.b64encode(f"{u}:{p}".encode()).decode()} for host, (u, p) in auths.items()
    }
    return write(path, json.dumps({"auths": entries}))


def test_a_chain_file_gives_each_hop_its_credentials_and_tls_settings(tmp_path: Path) -> None:
    write(tmp_path / "certs/ca.crt", CA)
    docker_config(tmp_path / "docker/config.json", {"b.example": ("robot$core", "core-secret")})
    chain = load_chain_file(write(tmp_path / "chain.yaml", CHAIN), FileSettings())
    edge, core, origin = chain.hops
    assert chain.name == "corp" and chain.interval == 600 and chain.mode is Mode.HEAD
    assert (
        edge.credentials == Credentials("robot$edge", "edge-secret")
        and edge.ca_pem == CA
        and not edge.insecure
    )
    assert (
        core.credentials == Credentials("robot$core", "core-secret") and core.insecure and core.ca_pem is None
    )
    assert origin.credentials is None


def test_hops_without_their_own_credentials_use_the_default_docker_config(
    tmp_path: Path, no_personal_docker_config: Path
) -> None:
    write(tmp_path / "certs/ca.crt", CA)
    docker_config(tmp_path / "docker/config.json", {})
    docker_config(no_personal_docker_config / "config.json", {"ghcr.io": ("gh", "gh-token")})
    chain = load_chain_file(write(tmp_path / "chain.yaml", CHAIN), FileSettings())
    assert chain.hop("origin").credentials == Credentials("gh", "gh-token")


def test_settings_give_every_hop_a_docker_config_ca_and_insecure_flag(tmp_path: Path) -> None:
    config = docker_config(tmp_path / "ci-docker.json", {"ghcr.io": ("ci", "ci-token")})
    ca = write(tmp_path / "corp-ca.pem", CA)
    text = "kind: ProxyChain\nmetadata: {name: c}\nspec:\n  hops: [{name: origin, url: 'https://ghcr.io'}]\n"
    chain = load_chain_file(
        write(tmp_path / "c.yaml", text), FileSettings(docker_config=config, ca_file=ca, insecure=True)
    )
    origin = chain.hops[0]
    assert origin.credentials == Credentials("ci", "ci-token") and origin.ca_pem == CA and origin.insecure


@pytest.mark.parametrize(
    ("hop", "complaint"),
    [
        (
            "{name: edge, url: 'https://a.example', secretRef: {name: robot}}",
            "hop edge: secretRef needs a cluster; use dockerConfig or username/password",
        ),
        (
            "{name: edge, url: 'https://a.example', username: robot}",
            "hop edge: username and password must both be strings",
        ),
        (
            "{name: edge, url: 'https://a.example', username: robot, password: 1234}",
            "username and password must both be strings",
        ),
        (
            "{name: edge, url: 'https://a.example', dockerConfig: nowhere.json}",
            "cannot read docker config .*nowhere.json",
        ),
        (
            "{name: edge, url: 'https://a.example', dockerConfig: bad.json}",
            "docker config .*bad.json is not valid JSON",
        ),
        ("{name: edge, url: 'https://a.example', caFile: nowhere.crt}", "cannot read CA file .*nowhere.crt"),
        (
            "{name: edge, url: 'ftp://a.example'}",
            "hop edge: url 'ftp://a.example' must start with https:// or http://",
        ),
        ("{name: Edge, url: 'https://a.example'}", "hop name 'Edge' must be a DNS label"),
    ],
)
def test_a_bad_hop_in_a_chain_file_is_refused_with_a_clear_message(
    tmp_path: Path, hop: str, complaint: str
) -> None:
    write(tmp_path / "bad.json", "{not json")
    path = write(
        tmp_path / "chain.yaml", f"kind: ProxyChain\nmetadata: {{name: c}}\nspec:\n  hops:\n  - {hop}\n"
    )
    with pytest.raises(ChainError, match=complaint) as caught:
        load_chain_file(path, FileSettings())
    assert "\n" not in str(caught.value)


def test_duplicate_hop_names_in_a_chain_file_are_refused(tmp_path: Path) -> None:
    text = """\
    kind: ProxyChain
    metadata: {name: c}
    spec:
      hops:
      - {name: edge, url: 'https://a.example/p'}
      - {name: edge, url: 'https://ghcr.io'}
    """
    with pytest.raises(ChainError, match="chain c: duplicate hop names: edge"):
        load_chain_file(write(tmp_path / "c.yaml", text), FileSettings())


def test_bad_yaml_is_refused_naming_the_line(tmp_path: Path) -> None:
    path = write(
        tmp_path / "chain.yaml", "kind: ProxyChain\nmetadata:\n  name: c\nspec: [unclosed\n  hops: {}\n"
    )
    with pytest.raises(ChainError, match=r"chain.yaml is not valid YAML at line \d+") as caught:
        load_chain_file(path, FileSettings())
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("", "must hold exactly one ProxyChain document"),
        (CHAIN + "---\n" + CHAIN, "must hold exactly one ProxyChain document"),
        (
            CHAIN + "---\nkind: Target\nname: t\nurl: oci://ghcr.io/a/b\n",
            "must hold exactly one ProxyChain document",
        ),
        ("kind: Secret\n", "document 1: kind must be ProxyChain or Target, not 'Secret'"),
        ("- a\n- b\n", "document 1: not a mapping"),
        ("kind: ProxyChain\nspec: {}\n", "ProxyChain needs metadata.name"),
        ("kind: ProxyChain\nmetadata: {name: c}\n", "chain c: spec is missing"),
        (
            "kind: ProxyChain\nmetadata: {name: c}\nspec: {hops: []}\n",
            "chain c: spec.hops must be a non-empty list",
        ),
    ],
)
def test_a_chain_file_without_exactly_one_good_proxychain_is_refused(
    tmp_path: Path, text: str, complaint: str
) -> None:
    with pytest.raises(ChainError, match=complaint):
        load_chain_file(write(tmp_path / "chain.yaml", text), FileSettings())


def test_a_missing_chain_file_is_a_chain_error(tmp_path: Path) -> None:
    with pytest.raises(ChainError, match=r"cannot read file .*absent\.yaml"):
        load_chain_file(tmp_path / "absent.yaml", FileSettings())


def test_hop_flags_build_a_chain_edge_first(tmp_path: Path) -> None:
    chain = chain_from_hop_flags(["edge=https://a.example/p-core", "origin=https://ghcr.io"], FileSettings())
    assert [(h.name, h.url) for h in chain.hops] == [
        ("edge", "https://a.example/p-core"),
        ("origin", "https://ghcr.io"),
    ]
    with pytest.raises(ChainError, match="want NAME=URL"):
        chain_from_hop_flags(["https://a.example"], FileSettings())


def test_the_direct_hop_gets_credentials_from_the_docker_config(tmp_path: Path) -> None:
    config = docker_config(tmp_path / "d.json", {"ghcr.io": ("gh", "tok")})
    options = direct_hop_options("ghcr.io", FileSettings(docker_config=config))
    assert options["credentials"] == Credentials("gh", "tok") and options["insecure"] is False


# -- layerwatch serve --config ------------------------------------------------------------------------

SERVE = """\
kind: ProxyChain
metadata: {name: corp}
spec:
  hops:
  - {name: edge, url: 'https://a.example/p-core'}
  - {name: core, url: 'https://b.example/p-ghcr'}
  - {name: origin, url: 'https://ghcr.io'}
---
kind: ProxyChain
metadata: {name: hub}
spec:
  hops:
  - {name: mirror, url: 'https://a.example/p-hub'}
  - {name: origin, url: 'https://docker.io'}
---
kind: Target
metadata: {name: app}
spec:
  url: oci://a.example/p-core/p-ghcr/org/app
  ref: {tag: v1}
  layerSelector: {mediaType: application/vnd.cncf.flux.content.v1.tar+gzip}
---
kind: Target
name: tools
url: oci://a.example/p-hub/library/busybox
ref: sha-1a2b3c4
---
kind: Target
name: pinned
url: oci://ghcr.io/org/app
chain: corp
ref: {digest: "sha256:0000000000000000000000000000000000000000000000000000000000000000"}
"""


def test_serve_config_matches_targets_to_chains_by_url_or_by_name(tmp_path: Path) -> None:
    config = load_serve_config(write(tmp_path / "serve.yaml", SERVE), FileSettings())
    assert sorted(config.chains) == ["corp", "hub"]
    by_name = {t.name: t for t in config.targets}
    assert by_name["app"].chain == "corp"
    assert by_name["app"].layer_media_type == "application/vnd.cncf.flux.content.v1.tar+gzip"
    assert str(by_name["app"].reference) == "a.example/p-core/p-ghcr/org/app:v1"
    assert by_name["tools"].chain == "hub" and by_name["tools"].reference.tag == "sha-1a2b3c4"
    assert by_name["pinned"].chain == "corp" and by_name["pinned"].reference.digest == "sha256:" + "0" * 64


@pytest.mark.parametrize(
    ("extra", "complaint"),
    [
        (
            "kind: Target\nname: x\nurl: oci://ghcr.io/org/app\nchain: nope\n",
            "target x: no ProxyChain named nope",
        ),
        ("kind: Target\nname: x\nurl: oci://quay.io/org/app\n", "target x: its URL is under no chain's hop"),
        ("kind: Target\nname: app\nurl: oci://ghcr.io/org/app\n", "target names must be unique"),
        ("kind: Target\nname: x\nurl: oci://a.example/p-core/org/app\n", "lacks its prefix 'p-ghcr'"),
        (
            "kind: ProxyChain\nmetadata: {name: corp}\nspec: {hops: [{name: o, url: 'https://ghcr.io'}]}\n",
            "two ProxyChains named corp",
        ),
        (
            "kind: Target\nname: x\nurl: oci://ghcr.io/org/app\nref: {digest: 'sha256:zz'}\n",
            "target x: invalid digest",
        ),
    ],
)
def test_a_bad_serve_config_is_refused_naming_the_target_or_chain(
    tmp_path: Path, extra: str, complaint: str
) -> None:
    path = write(tmp_path / "serve.yaml", SERVE + "---\n" + extra)
    with pytest.raises(ChainError, match=complaint):
        load_serve_config(path, FileSettings())


def test_a_serve_config_password_does_not_show_in_the_loaded_config(tmp_path: Path) -> None:
    text = SERVE.replace(
        "{name: edge, url: 'https://a.example/p-core'}",
        "{name: edge, url: 'https://a.example/p-core', username: u, password: pw-XYZZY}",
    )
    config = load_serve_config(write(tmp_path / "serve.yaml", text), FileSettings())
    assert config.chains["corp"].hop("edge").credentials == Credentials("u", "pw-XYZZY")
    assert "pw-XYZZY" not in repr(config)


# -- strict files: a typo or a quoted boolean is an error, never a silently different setting ---------


def _chain_text(hop: str = "{name: edge, url: 'https://a.example'}", spec: str = "") -> str:
    return f"kind: ProxyChain\nmetadata: {{name: c}}\nspec:\n{spec}  hops:\n  - {hop}\n"


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        (
            _chain_text("{name: edge, url: 'https://a.example', usrname: robot, password: pw}"),
            r"chain c: spec.hops\[0\]: unknown key 'usrname' \(did you mean 'username'\?\)",
        ),
        (
            _chain_text("{name: edge, url: 'https://a.example', cafile: ca.crt}"),
            r"unknown key 'cafile' \(did you mean 'caFile'\?\)",
        ),
        (
            _chain_text(spec="  intervall: 5m\n"),
            r"chain c: spec: unknown key 'intervall' \(did you mean 'interval'\?\)",
        ),
        (
            _chain_text() + "specs: {}\n",
            r"chain c: unknown key 'specs' \(did you mean 'spec'\?\)",
        ),
        (
            _chain_text("{name: edge, url: 'https://a.example', zzz: 1}"),
            r"unknown key 'zzz' \(known: caFile, caSecretRef, certFile, certSecretRef, dockerConfig, "
            r"insecureSkipTLSVerify,",
        ),
        (
            _chain_text("{name: edge, url: 'https://a.example', insecureSkipTLSVerify: 'false'}"),
            r"hop edge.insecureSkipTLSVerify must be true or false, not 'false' \(write it without quotes\)",
        ),
        (
            _chain_text(spec="  suspend: 'false'\n"),
            r"chain c: spec.suspend must be true or false, not 'false'",
        ),
        (_chain_text(spec="  suspend: 1\n"), r"chain c: spec.suspend must be true or false, not 1"),
        (
            _chain_text(spec="  interval: 500ms\n"),
            r"chain c: interval must be at least 1s, not 0.5s",
        ),
        (_chain_text(spec="  interval: -5s\n"), r"chain c: spec.interval: invalid duration"),
        (
            _chain_text("{name: edge, url: 'https://a.example', caSecretRef: {name: ca}}"),
            "hop edge: caSecretRef needs a cluster; use caFile here",
        ),
    ],
)
def test_a_chain_file_is_read_strictly_with_one_line_that_names_the_fix(
    tmp_path: Path, text: str, complaint: str
) -> None:
    with pytest.raises(ChainError, match=complaint) as caught:
        load_chain_file(write(tmp_path / "chain.yaml", text), FileSettings())
    assert "\n" not in str(caught.value)


def test_real_booleans_in_a_chain_file_still_work(tmp_path: Path) -> None:
    text = _chain_text(
        "{name: edge, url: 'https://a.example', insecureSkipTLSVerify: false}", "  suspend: false\n"
    )
    chain = load_chain_file(write(tmp_path / "chain.yaml", text), FileSettings())
    assert chain.hops[0].insecure is False and chain.suspend is False
    text = _chain_text(
        "{name: edge, url: 'https://a.example', insecureSkipTLSVerify: true}", "  interval: 1s\n"
    )
    chain = load_chain_file(write(tmp_path / "chain.yaml", text), FileSettings())
    assert chain.hops[0].insecure is True and chain.interval == 1


def test_a_password_in_a_hop_url_is_refused_and_masked(tmp_path: Path) -> None:
    text = _chain_text("{name: edge, url: 'http://robot:s3cret-XYZ@a.example/p'}")
    with pytest.raises(ChainError) as caught:
        load_chain_file(write(tmp_path / "chain.yaml", text), FileSettings())
    message = str(caught.value)
    assert "s3cret-XYZ" not in message
    assert "hop edge: url 'http://robot:***@a.example/p' must not carry credentials" in message
    with pytest.raises(ChainError, match="must not carry credentials") as caught:
        chain_from_hop_flags(["edge=https://robot:s3cret-XYZ@a.example"], FileSettings())
    assert "s3cret-XYZ" not in str(caught.value)


def test_an_unreadable_docker_config_says_so_once(tmp_path: Path) -> None:
    text = _chain_text("{name: edge, url: 'https://a.example', dockerConfig: nowhere.json}")
    with pytest.raises(ChainError) as caught:
        load_chain_file(write(tmp_path / "chain.yaml", text), FileSettings())
    assert str(caught.value) == (
        f"cannot read docker config {tmp_path / 'nowhere.json'}: No such file or directory"
    )


@pytest.mark.parametrize(
    ("target", "complaint"),
    [
        (
            "kind: Target\nname: x\nurl: oci://ghcr.io/org/app\nlayerselector: {}\n",
            "did you mean 'layerSelector'",
        ),
        (
            "kind: Target\nmetadata: {name: x}\nspec: {url: 'oci://ghcr.io/org/app', chian: corp}\n",
            r"target x: spec: unknown key 'chian' \(did you mean 'chain'\?\)",
        ),
        ("kind: Target\nname: x\nurl: oci://ghcr.io/org/app\nref: {tags: v1}\n", "did you mean 'tag'"),
        (
            "kind: Target\nname: x\nurl: oci://ghcr.io/org/app\nlayerSelector: {mediatype: x}\n",
            "did you mean 'mediaType'",
        ),
    ],
)
def test_a_target_document_is_read_strictly(tmp_path: Path, target: str, complaint: str) -> None:
    path = write(tmp_path / "serve.yaml", SERVE + "---\n" + target)
    with pytest.raises(ChainError, match=complaint):
        load_serve_config(path, FileSettings())


def test_a_targets_file_may_leave_targets_without_a_chain(tmp_path: Path) -> None:
    text = SERVE + "---\nkind: Target\nname: loose\nurl: oci://quay.io/org/app:v2\n"
    config = load_targets_file(write(tmp_path / "targets.yaml", text), FileSettings())
    by_name = {t.name: t for t in config.targets}
    assert by_name["loose"].chain is None and by_name["app"].chain == "corp"
    with pytest.raises(ChainError, match="target loose: its URL is under no chain's hop"):
        load_serve_config(tmp_path / "targets.yaml", FileSettings())


@given(extra=st.text(min_size=1, max_size=20).filter(lambda k: k not in HOP_KEYS))
def test_any_key_a_hop_does_not_know_is_refused_naming_it(extra: str) -> None:
    hop = {"name": "edge", "url": "https://a.example", extra: "x"}
    with pytest.raises(ChainError) as caught:
        check_keys(hop, HOP_KEYS, "chain c: spec.hops[0]")
    assert f"unknown key {extra!r}" in str(caught.value)
    check_keys({key: None for key in HOP_KEYS}, HOP_KEYS, "chain c: spec.hops[0]")  # every known key passes
