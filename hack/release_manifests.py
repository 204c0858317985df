"""``make release-manifests``: publish manifests/ as a Flux OCI artifact, for an OCIRepository to install.

The artifact has the format ``flux push artifact`` gives: an OCI image manifest whose config is
``application/vnd.cncf.flux.config.v1+json``, one ``application/vnd.cncf.flux.content.v1.tar+gzip``
layer holding the files (a normalised tar.gz, so the same tree always gives the same digest), and the
annotations ``org.opencontainers.image.created``, ``.source`` and ``.revision``. It is pushed with
the ``oras`` CLI (``hack/build-tools.sh oras``), which takes its credentials from the docker config
(``oras login``).

The tarball holds every file under manifests/ with symlinks resolved (Flux does not extract links),
so a Flux Kustomization with ``path: ./`` installs what ``kubectl apply -k manifests/`` installs, and
``path: ./sharded`` the sharded variant.

    hack/release_manifests.py [--plain-http] [--tag TAG] REGISTRY/REPOSITORY
"""

from __future__ import annotations

import argparse
import datetime as dt
import subprocess
import sys
import tomllib
from pathlib import Path

from lab.artifacts import push_flux_artifact
from lab.process import LabError

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "manifests"
DEFAULT_SOURCE = "https://github.com/layerwatch/layerwatch"


def project_version() -> str:
    with (ROOT / "pyproject.toml").open("rb") as file:
        return str(tomllib.load(file)["project"]["version"])


def manifest_files(directory: Path = MANIFESTS) -> dict[str, bytes]:
    """Every file under ``directory`` by its relative path, symlinks replaced by what they point at."""
    return {
        path.relative_to(directory).as_posix(): path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def _git(*args: str) -> str | None:
    done = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False)
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else None


def provenance(version: str) -> tuple[dt.datetime, str, str]:
    """created, source and revision as ``flux push artifact --source --revision`` would record them.

    The creation time is the commit's, so pushing the same commit twice gives the same artifact.
    """
    commit = _git("rev-parse", "HEAD")
    when = _git("show", "-s", "--format=%cI", "HEAD")
    created = dt.datetime.fromisoformat(when) if when else dt.datetime.now(dt.UTC)
    source = _git("remote", "get-url", "origin") or DEFAULT_SOURCE
    revision = f"{version}@sha1:{commit}" if commit else version
    return created, source, revision


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("repository", help="where to push, e.g. ghcr.io/layerwatch/manifests/layerwatch")
    parser.add_argument("--tag", help="the artifact's tag (default: the project version)")
    parser.add_argument("--plain-http", action="store_true", help="the registry speaks HTTP (a lab registry)")
    args = parser.parse_args(argv)
    target = args.repository.removeprefix("oci://")
    registry, _, repository = target.partition("/")
    if not repository or ":" in repository or "@" in repository:
        print(f"release-manifests: {args.repository!r} is not REGISTRY/REPOSITORY (no tag)", file=sys.stderr)
        return 2
    version = project_version()
    tag = args.tag or version
    created, source, revision = provenance(version)
    try:
        pushed = push_flux_artifact(
            registry,
            repository,
            tag,
            manifest_files(),
            created=created,
            source=source,
            revision=revision,
            plain_http=args.plain_http,
        )
    except LabError as exc:
        print(f"release-manifests: {exc}", file=sys.stderr)
        return 1
    print(f"oci://{registry}/{repository}:{tag}@{pushed.manifest_digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
