"""Fixtures for tests against the real local registry chain (`lab.chain.LocalChain`)."""

from __future__ import annotations

import itertools
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.chain import LocalChain
from lab.harbor import HarborChain, missing_harbor_parts
from lab.process import LabError
from lab.registry import DOCKER_REGISTRY
from lab.signing import Signer, cosign_path, notation_path

_ORAS = os.environ.get("ORAS") or str(Path.home() / ".cache/layerwatch/bin/oras")
_counter = itertools.count()


@pytest.fixture(scope="session")
def local_chain() -> Iterator[LocalChain]:
    """One edge -> core -> origin chain for the whole session; processes are stopped even on failure."""
    if not shutil.which(DOCKER_REGISTRY):
        pytest.fail(f"{DOCKER_REGISTRY} missing (apt-get install docker-registry)", pytrace=False)
    if not os.access(_ORAS, os.X_OK):
        pytest.fail(f"oras missing at {_ORAS} (hack/build-tools.sh oras)", pytrace=False)
    with LocalChain() as chain:
        yield chain


@pytest.fixture(scope="session")
def harbor_chain() -> Iterator[HarborChain]:
    """Origin registry <- core Harbor <- edge Harbor (real Harbor v2.15.2, private proxy projects,
    a robot each), started once per session; every process is stopped even on failure."""
    missing = missing_harbor_parts()
    if not os.access(_ORAS, os.X_OK):
        missing.append(f"oras at {_ORAS} (hack/build-tools.sh oras)")
    if missing:
        pytest.fail("the real Harbor chain needs: " + "; ".join(missing), pytrace=False)
    with HarborChain() as chain:
        yield chain


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Signer]:
    """cosign and notation keys for a module; a missing cosign or notation fails the tests (never
    skips them)."""
    try:
        cosign_path(), notation_path()
    except LabError as exc:
        pytest.fail(str(exc), pytrace=False)
    yield Signer(tmp_path_factory.mktemp("keys"))


@pytest.fixture
def fresh_repo() -> str:
    """A repository name no earlier test used, so no proxy has anything cached for it."""
    return f"org/t{next(_counter)}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(autouse=True)
def _clean_faults(request: pytest.FixtureRequest) -> Iterator[None]:
    """Leave every hop without faults and with an empty request log after each chain test."""
    yield
    if "local_chain" in request.fixturenames:
        chain: LocalChain = request.getfixturevalue("local_chain")
        for hop in chain.hops:
            hop.gateway.faults.clear()
            hop.gateway.faults.clear_requests()
