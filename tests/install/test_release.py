"""One version everywhere, one image reference, and the release files a user looks for."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml
from tests.install.conftest import CHART, MANIFESTS

from lab.kube import REPO

IMAGE = "ghcr.io/layerwatch/layerwatch"


def project() -> dict[str, object]:
    with (REPO / "pyproject.toml").open("rb") as file:
        return dict(tomllib.load(file)["project"])


def version() -> str:
    return str(project()["version"])


def _env() -> dict[str, str]:
    return os.environ | {
        "PYTHONPATH": os.pathsep.join([str(REPO / "operator"), os.environ.get("PYTHONPATH", "")])
    }


def test_cli_version_is_the_project_version() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "layerwatch.cli", "--version"], capture_output=True, text=True, env=_env()
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"layerwatch {version()}"


def test_build_info_metric_carries_the_project_version() -> None:
    from layerwatch.metrics import Metrics
    from layerwatch.store import ResultStore

    exposition = Metrics(ResultStore()).exposition().decode()
    assert f'layerwatch_build_info{{version="{version()}"}} 1.0' in exposition


def test_chart_version_and_app_version_are_the_project_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["version"] == chart["appVersion"] == version()


def test_the_image_is_named_once_for_kustomize_and_once_for_helm() -> None:
    """manifests/image/ tags the image with the version; the chart's default tag is its appVersion."""
    (component,) = yaml.safe_load((MANIFESTS / "image" / "kustomization.yaml").read_text())["images"]
    assert component == {"name": IMAGE, "newTag": version()}
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["image"]["repository"] == IMAGE and values["image"]["tag"] == ""
    raw = [
        line.split("image:")[1].split("#")[0].strip()
        for path in MANIFESTS.rglob("*.yaml")
        for line in path.read_text().splitlines()
        if line.strip().startswith("image:")
    ]
    assert raw and set(raw) == {IMAGE}, "a manifest names a tag itself; only manifests/image/ may"


def test_image_label_comes_from_the_project_version() -> None:
    """hack/build-image.sh passes pyproject's version as VERSION, which labels the image."""
    script = (REPO / "hack" / "build-image.sh").read_text()
    assert 'tomllib.load(open("pyproject.toml", "rb"))["project"]["version"]' in script
    assert '--build-arg "VERSION=$version"' in script
    assert 'org.opencontainers.image.version="${VERSION}"' in (REPO / "Dockerfile").read_text()


def test_license_is_the_apache_2_0_text_pyproject_declares() -> None:
    text = (REPO / "LICENSE").read_bytes()
    # The canonical text as the Apache Software Foundation publishes it (same bytes as in Kubernetes).
    assert (
        hashlib.sha256(text).hexdigest() == "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30"
    )
    assert project()["license"] == {"text": "Apache-2.0"}
    assert 'org.opencontainers.image.licenses="Apache-2.0"' in (REPO / "Dockerfile").read_text()


def test_changelog_has_a_section_for_this_version() -> None:
    lines = (REPO / "CHANGELOG.md").read_text().splitlines()
    assert any(line.startswith(f"## {version()}") for line in lines)


def test_package_data_names_only_files_that_exist() -> None:
    with (REPO / "pyproject.toml").open("rb") as file:
        patterns = tomllib.load(file)["tool"]["setuptools"]["package-data"]["layerwatch"]
    package = REPO / "operator" / "layerwatch"
    assert all(list(package.glob(pattern)) for pattern in patterns), patterns


def test_version_without_an_install_still_comes_from_pyproject(tmp_path: Path) -> None:
    """A checkout run with PYTHONPATH (make demo, tests) reports the real version, not 0.0.0."""
    done = subprocess.run(
        [
            sys.executable,
            "-I",
            "-c",
            "import sys; sys.path.insert(0, sys.argv[1]); import layerwatch; print(layerwatch.__version__)",
            str(REPO / "operator"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == version()
