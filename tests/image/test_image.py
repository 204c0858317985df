"""The container image builds without a Docker daemon and runs for real.

hack/build-image.sh builds it with buildah on the cached debootstrap base; these tests then read the
image's config and mounted filesystem, run ``layerwatch`` in it as UID 65532 against the lab's registry
chain, push it to the lab's origin registry and check it there with the host's ``layerwatch check``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from image_support import IMAGE_FACTS, REPO, Buildah, Container, project_version

from lab.artifacts import oras_path, push_flux_artifact
from lab.chain import LocalChain
from lab.process import LabError
from lab.registry import DOCKER_REGISTRY

pytestmark = [pytest.mark.image, pytest.mark.timeout(1800)]

HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
OCI_LABELS = ("title", "description", "source", "licenses", "version")
BUILD_TOOLS = ("gcc", "cc", "g++", "c++", "make", "ld", "as", "cpp")
# Paths buildah itself provides or creates while a container runs, and the scratch space we allow.
RUNTIME_PATHS = ("tmp", "run", "dev", "proc", "sys", "etc/hosts", "etc/hostname", "etc/resolv.conf", "chain")
MAX_IMAGE_BYTES = 350 * 1000 * 1000
CHECK_TIMEOUT = 300.0
_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----\s+(.+?)\s+-----END CERTIFICATE-----", re.S)


def walk_files(root: Path) -> Iterator[tuple[str, os.stat_result]]:
    """(path relative to root, lstat) of everything under ``root``, symlinks not followed."""
    for directory, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(directory, name)
            yield os.path.relpath(path, root), os.lstat(path)


def regular_files(root: Path) -> Iterator[tuple[str, os.stat_result]]:
    return ((rel, st) for rel, st in walk_files(root) if stat.S_ISREG(st.st_mode))


def certificates(bundle: bytes) -> dict[bytes, bytes]:
    """The PEM certificates in ``bundle``: base64 body without whitespace -> body as written."""
    return {re.sub(rb"\s+", b"", body): body for body in _PEM.findall(bundle)}


def host_layerwatch(*args: str) -> subprocess.CompletedProcess[str]:
    """This checkout's CLI on the host."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "operator"), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "layerwatch.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=CHECK_TIMEOUT,
        check=False,
    )


def report(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    try:
        return dict(json.loads(done.stdout))
    except json.JSONDecodeError:
        raise AssertionError(
            f"no JSON report (exit {done.returncode}):\n{done.stdout}\n{done.stderr}"
        ) from None


def describe(result: dict[str, Any]) -> str:
    hops = ", ".join(f"{h.get('name')}={h.get('verdict')}" for h in result.get("hops", []))
    return f"{result['verdict']}: {result.get('message')} (blame {result.get('blame')}; {hops})"


@pytest.fixture(scope="module")
def chain() -> Iterator[LocalChain]:
    """The lab's edge -> core -> origin chain (real distribution registries behind Harbor-like gateways)."""
    if shutil.which(DOCKER_REGISTRY) is None:
        pytest.fail(f"{DOCKER_REGISTRY} missing: run hack/install-deps.sh (make deps)")
    try:
        oras_path()
    except LabError as exc:
        pytest.fail(str(exc))
    with LocalChain() as lab:
        yield lab


# --- the image's config ------------------------------------------------------------------------------


def test_runs_as_numeric_non_root_user(image_config: dict[str, Any]) -> None:
    assert image_config["User"] == "65532:65532"


def test_entrypoint_and_default_command(image_config: dict[str, Any]) -> None:
    assert image_config["Entrypoint"] == ["layerwatch"]
    assert image_config["Cmd"] == ["operator", "--all-namespaces"]
    assert image_config["WorkingDir"] == "/tmp"
    env = dict(item.split("=", 1) for item in image_config["Env"])
    assert env["HOME"] == "/tmp"
    assert env["PATH"].split(":")[0] == "/opt/layerwatch/bin"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"


def test_oci_labels(image_config: dict[str, Any]) -> None:
    labels = image_config["Labels"]
    for name in OCI_LABELS:
        assert labels.get(f"org.opencontainers.image.{name}"), (
            f"label org.opencontainers.image.{name} missing"
        )
    assert labels["org.opencontainers.image.title"] == "layerwatch"
    assert labels["org.opencontainers.image.version"] == project_version()
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"


# --- the image's filesystem ----------------------------------------------------------------------------


def test_no_compilers_or_build_tools(container: Container) -> None:
    found = [
        f"{directory}/{tool}"
        for directory in ("usr/bin", "usr/local/bin", "bin", "sbin", "usr/sbin", "opt/layerwatch/bin")
        for tool in BUILD_TOOLS
        if os.path.lexists(container.root / directory / tool)
    ]
    assert found == []
    site = next((container.root / "opt/layerwatch/lib").glob("python3*/site-packages"))
    leftovers = sorted(
        p.name for p in site.iterdir() if p.name.split("-")[0] in {"pip", "setuptools", "wheel"}
    )
    assert leftovers == [], "installers left in the venv"
    assert not (container.root / "usr/include").exists() or not any(
        (container.root / "usr/include").iterdir()
    )


def test_no_pip_cache_or_build_leftovers(container: Container) -> None:
    caches = [
        rel
        for rel, _ in walk_files(container.root)
        if re.search(r"(^|/)\.cache/pip$|(^|/)pip-(ephem|req|build)", rel)
    ]
    assert caches == []
    assert not (container.root / "src").exists(), "build directory /src copied into the final stage"
    assert sorted(os.listdir(container.root / "tmp")) == []


def test_no_ca_secret_in_image(container: Container, base_root: Path) -> None:
    """The CA bundle was a build secret: not in /run/secrets, and nothing of the host's own CAs got in."""
    secrets = container.root / "run/secrets"
    assert not secrets.exists() or list(secrets.iterdir()) == []
    host_bundle = HOST_CA_BUNDLE.read_bytes()
    base_bundle = (base_root / "etc/ssl/certs/ca-certificates.crt").read_bytes()
    host_certs = certificates(host_bundle)
    distinctive = host_certs.keys() - certificates(base_bundle).keys()
    IMAGE_FACTS["host_only_cas"] = len(distinctive)
    # A full base64 line from the middle of each PEM body and a run of its DER bytes: whatever copies the
    # certificate (as PEM or DER) copies these.
    needles: list[bytes] = []
    for key in distinctive:
        lines = host_certs[key].splitlines()
        needles.append(lines[len(lines) // 2].strip())
        der = base64.b64decode(key)
        needles.append(der[len(der) // 2 : len(der) // 2 + 48])
    assert all(len(needle) >= 48 and needle in host_bundle for needle in needles[::2])
    host_digest = hashlib.sha256(host_bundle).digest()
    offenders = []
    for rel, st in regular_files(container.root):
        data = (container.root / rel).read_bytes()
        if st.st_size == len(host_bundle) and hashlib.sha256(data).digest() == host_digest:
            offenders.append(f"/{rel} (the host bundle)")
        elif any(needle in data for needle in needles):
            offenders.append(f"/{rel}")
    assert offenders == [], f"host-only CA certificates found in the image: {offenders}"


def test_no_project_tests_or_hack(container: Container) -> None:
    """Only the package went in: no tests/ or hack/ directory, no copy of any file from them."""
    assert not [
        rel for rel, st in walk_files(container.root) if stat.S_ISDIR(st.st_mode) and Path(rel).name == "hack"
    ]
    package = next((container.root / "opt/layerwatch/lib").glob("python3*/site-packages/layerwatch"))
    assert not [
        p for p in package.rglob("*") if p.name in {"tests", "conftest.py"} or p.name.startswith("test_")
    ]
    project: dict[int, set[str]] = {}
    for top in ("tests", "hack"):
        for path in (REPO / top).rglob("*"):
            if path.is_file() and path.stat().st_size >= 256 and "__pycache__" not in path.parts:
                project.setdefault(path.stat().st_size, set()).add(
                    hashlib.sha256(path.read_bytes()).hexdigest()
                )
    copies = [
        f"/{rel}"
        for rel, st in regular_files(container.root)
        if st.st_size in project
        and hashlib.sha256((container.root / rel).read_bytes()).hexdigest() in project[st.st_size]
    ]
    assert copies == [], "files from tests/ or hack/ in the image"


def test_image_size(buildah: Buildah, built_image: str, container: Container, record_property: Any) -> None:
    """Record the size (the unpacked root filesystem); a generous bound catches a toolchain sneaking in."""
    unpacked = sum(st.st_size for _, st in regular_files(container.root))
    venv = sum(st.st_size for _, st in regular_files(container.root / "opt/layerwatch"))
    listed = json.loads(buildah.run("images", "--json", built_image).stdout)[0]["size"]
    IMAGE_FACTS.update(unpacked_bytes=unpacked, venv_bytes=venv, buildah_size=listed)
    record_property("image_unpacked_bytes", unpacked)
    record_property("image_venv_bytes", venv)
    print(
        f"image {built_image}: {unpacked / 1e6:.1f} MB unpacked ({venv / 1e6:.1f} MB venv), "
        f"buildah says {listed}"
    )
    assert unpacked < MAX_IMAGE_BYTES


# --- running it ------------------------------------------------------------------------------------------


def test_version_as_uid_65532(container: Container) -> None:
    done = container.exec("layerwatch", "--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"layerwatch {project_version()}"
    ids = container.exec("id", "-u")
    assert ids.stdout.strip() == "65532"
    groups = container.exec("id", "-g")
    assert groups.stdout.strip() == "65532"


def test_operator_gets_past_startup_as_uid_65532(container: Container) -> None:
    """UID 65532 has a name (kopf's peering identity calls getpass.getuser()), so ``layerwatch operator``
    gets as far as looking for a cluster; there is none here, so that is where it must stop."""
    user = container.exec("python3", "-c", "import getpass; print(getpass.getuser())")
    assert user.stdout.strip() == "layerwatch", user.stderr
    done = container.exec("timeout", "20", "layerwatch", "operator", "--all-namespaces", timeout=60.0)
    output = done.stdout + done.stderr
    assert "getpwuid" not in output
    assert "ConfigException" in output or "kube" in output.lower(), output[-3000:]


def test_check_through_lab_chain_from_inside_image(
    container: Container, chain: LocalChain, tmp_path: Path
) -> None:
    """``layerwatch check`` in the image finds a Flux artifact Healthy through edge -> core -> origin,
    writing nothing outside /tmp (read-only root friendly)."""
    repository = f"org/image-{uuid.uuid4().hex[:8]}"
    pushed = push_flux_artifact(chain.push_address, repository, "v1")
    share = tmp_path / "share"
    share.mkdir()
    chain.write_chain_yaml(share / "chain.yaml")
    share.chmod(0o755)
    (share / "chain.yaml").chmod(0o644)
    before = {rel: (st.st_mtime_ns, st.st_size) for rel, st in walk_files(container.root)}
    done = container.exec(
        "layerwatch",
        "check",
        "--chain",
        "/chain/chain.yaml",
        "--output",
        "json",
        f"oci://{chain.reference(repository, 'v1')}",
        volumes=(f"{share}:/chain:ro",),
        timeout=CHECK_TIMEOUT,
    )
    result = report(done)
    assert result["verdict"] == "Healthy", describe(result)
    assert done.returncode == 0
    assert result["originDigest"] == pushed.manifest_digest
    assert [hop["name"] for hop in result["hops"]] == ["edge", "core", "origin"]
    after = {rel: (st.st_mtime_ns, st.st_size) for rel, st in walk_files(container.root)}
    changed = sorted(
        (before.keys() ^ after.keys()) | {rel for rel in before if before[rel] != after.get(rel)}
    )
    written = [rel for rel in changed if not rel.startswith(RUNTIME_PATHS)]
    assert written == [], "layerwatch wrote outside /tmp"


def test_push_image_to_origin_and_check_it(
    buildah: Buildah, built_image: str, chain: LocalChain, tmp_path: Path, record_property: Any
) -> None:
    """The image is an OCI artifact too: pushed to the origin, the host CLI finds it Healthy there and
    through the whole chain."""
    tag = project_version()
    repository = "layerwatch/layerwatch"
    started = time.monotonic()
    buildah.run(
        "push",
        "--tls-verify=false",
        built_image,
        f"docker://{chain.push_address}/{repository}:{tag}",
        timeout=600.0,
    )
    IMAGE_FACTS["push_seconds"] = round(time.monotonic() - started, 1)
    manifest = httpx.get(
        f"http://{chain.push_address}/v2/{repository}/manifests/{tag}",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
        timeout=30.0,
    ).json()
    compressed = sum(int(layer["size"]) for layer in manifest["layers"])
    IMAGE_FACTS["pushed_layers"] = [layer["mediaType"] for layer in manifest["layers"]]
    IMAGE_FACTS["compressed_bytes"] = compressed
    record_property("image_compressed_bytes", compressed)

    direct = host_layerwatch(
        "check", "--plain-http", "--output", "json", f"{chain.push_address}/{repository}:{tag}"
    )
    result = report(direct)
    manifest_digest = result["originDigest"]
    hop = result["hops"][0]
    IMAGE_FACTS["pushed_manifest"] = manifest_digest
    record_property("image_manifest_digest", manifest_digest)
    assert result["verdict"] == "Healthy", describe(result)
    assert direct.returncode == 0, hop

    chain_file = chain.write_chain_yaml(tmp_path / "chain.yaml")
    through = host_layerwatch(
        "check", "--chain", str(chain_file), "--output", "json", f"oci://{chain.reference(repository, tag)}"
    )
    result = report(through)
    assert result["verdict"] == "Healthy", describe(result)
    assert through.returncode == 0
    assert result["originDigest"] == manifest_digest
