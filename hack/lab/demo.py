"""``python -m lab.demo``: a broken core hop on a local chain, found by ``layerwatch check``.

Starts a `LocalChain`, pushes a Flux artifact to the origin, drops its content layer at the core
gateway before anything pulls it (so the edge cannot have it cached), then runs
``layerwatch check --chain <file> oci://<edge>/p-core/p-ghcr/org/app:v1`` and exits with its status.

``--keep`` (``make lab``) instead keeps the chain up until Ctrl-C, with a healthy and a broken
artifact, a chain file and a ``layerwatch serve`` config, and prints the commands to try.
``--keep --harbor`` (``make lab HARBOR=1``) keeps real Harbors up instead: edge Harbor -> core
Harbor -> origin registry (`lab.harbor.HarborChain`), with a healthy artifact and each hop's robot.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from lab.artifacts import push_flux_artifact
from lab.chain import LocalChain
from lab.harbor import HarborChain, missing_harbor_parts

__all__ = ["main"]

_REPO_ROOT = Path(__file__).resolve().parents[2]
CHECK_TIMEOUT = 120.0


def layerwatch_command() -> list[str]:
    """The ``layerwatch`` script of this interpreter's environment (the demo's virtualenv), else
    the CLI module from this checkout; never a ``layerwatch`` that happens to be first on PATH."""
    script = Path(sys.executable).parent / "layerwatch"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "layerwatch.cli"]


def keep_up(directory: Path) -> int:
    """``make lab``: the chain with ``org/app:v1`` (healthy) and ``org/broken:v1`` (layer lost at
    core), until Ctrl-C. Writes ``chain.yaml`` and ``watch.yaml`` into ``directory``."""
    with LocalChain() as chain:
        push_flux_artifact(chain.push_address, "org/app", "v1")
        broken = push_flux_artifact(chain.push_address, "org/broken", "v1")
        core_repository = chain.repository_at("core", "org/broken")
        chain.faults("core").set(
            [{"kind": "drop", "repository": core_repository, "digest": broken.content_layer.digest}]
        )
        chain_file = chain.write_chain_yaml(directory / "chain.yaml", name="lab")
        document = chain.chain_document("lab")
        document["spec"] = {**document["spec"], "interval": "30s"}
        targets = [
            {
                "kind": "Target",
                "name": name,
                "url": f"oci://{chain.reference(f'org/{name}', 'v1')}",
                "chain": "lab",
            }
            for name in ("app", "broken")
        ]
        watch = directory / "watch.yaml"
        watch.write_text(yaml.safe_dump_all([document, *targets], sort_keys=False))
        user, password = chain.hop("edge").credentials or ("", "")
        command = " ".join(layerwatch_command())
        lines = [
            "The lab chain is up (Ctrl-C stops it and deletes everything):",
            *(f"  {hop.name:<7} {hop.url}" for hop in chain.hops),
            f"  the edge wants a robot account: {user} / {password}",
            f"  push to the origin registry: oras push --plain-http {chain.push_address}/org/NAME:TAG ...",
            "Artifacts: org/app:v1 (healthy), org/broken:v1 (its content layer is gone at core).",
            "Try:",
            f"  {command} check --chain {chain_file} oci://{chain.reference('org/app', 'v1')}",
            f"  {command} check --chain {chain_file} oci://{chain.reference('org/broken', 'v1')}",
            f"  {command} inspect --chain {chain_file} oci://{chain.reference('org/app', 'v1')}",
            f"  {command} serve --config {watch} --metrics-port 9090   # then http://127.0.0.1:9090/",
        ]
        _wait_for_interrupt(lines)
    return 0


def keep_up_harbor(directory: Path) -> int:
    """``make lab HARBOR=1``: real Harbors with ``org/app:v1``, until Ctrl-C. Writes ``chain.yaml``."""
    missing = missing_harbor_parts()
    if missing:
        print("the Harbor lab needs: " + "; ".join(missing), file=sys.stderr)
        return 2
    with HarborChain() as chain:
        push_flux_artifact(chain.push_address, "org/app", "v1")
        chain_file = chain.write_chain_yaml(directory / "chain.yaml", name="lab")
        command = " ".join(layerwatch_command())
        hops = []
        for hop in chain.hops:
            robot = f"  robot {hop.credentials[0]} / {hop.credentials[1]}" if hop.credentials else ""
            hops.append(f"  {hop.name:<7} {hop.url}{robot}")
        lines = [
            f"The Harbor lab chain is up after {chain.start_seconds:.0f}s (Ctrl-C stops and deletes it all):",
            *hops,
            *(
                f"  {h.name} admin: {h.base_url}/api/v2.0/ as admin / {h.admin_password}"
                for h in chain.harbors
            ),
            f"  push to the origin registry: oras push --plain-http {chain.push_address}/org/NAME:TAG ...",
            "Artifacts: org/app:v1.",
            "Try:",
            f"  {command} check --chain {chain_file} oci://{chain.reference('org/app', 'v1')}",
            f"  {command} check --chain {chain_file} --mode head oci://{chain.reference('org/app', 'v1')}",
        ]
        _wait_for_interrupt(lines)
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _wait_for_interrupt(lines: list[str]) -> None:
    """Print what is up and how to use it, then wait for Ctrl-C or SIGTERM (the caller's ``with``
    cleans up). Both are handled explicitly: a shell starting us in the background ignores SIGINT,
    and an unhandled SIGTERM would leave every child running."""
    print("\n".join(lines), flush=True)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _interrupt)
    with contextlib.suppress(KeyboardInterrupt):
        signal.pause()
    print("lab chain stopped")


def run(repository: str = "org/app", tag: str = "v1", output: str = "text") -> int:
    """Run the demo; returns ``layerwatch check``'s exit status (1 expected: a hop is unhealthy)."""
    with LocalChain() as chain, tempfile.TemporaryDirectory(prefix="lab-demo-") as tmp:
        pushed = push_flux_artifact(chain.push_address, repository, tag)
        layer = pushed.content_layer.digest
        core_repository = chain.repository_at("core", repository)
        chain.faults("core").set([{"kind": "drop", "repository": core_repository, "digest": layer}])
        print(f"pushed {pushed.reference} ({pushed.manifest_digest})")
        print(f"dropped layer {layer[:19]} at hop core ({chain.core_url}/{repository})")
        chain_file = chain.write_chain_yaml(Path(tmp) / "chain.yaml", name="lab")
        reference = f"oci://{chain.reference(repository, tag)}"
        command = [*layerwatch_command(), "check", "--chain", str(chain_file), "--output", output, reference]
        print("$ layerwatch check --chain", chain_file.name, "--output", output, reference, flush=True)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(_REPO_ROOT / "operator"), env.get("PYTHONPATH")])
        )
        try:
            done = subprocess.run(command, env=env, timeout=CHECK_TIMEOUT, check=False)
        except subprocess.TimeoutExpired:
            print(f"layerwatch check did not finish within {CHECK_TIMEOUT:.0f}s", file=sys.stderr)
            return 3
        print(f"layerwatch check exited with {done.returncode}")
        return done.returncode


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lab.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--repository", default="org/app")
    parser.add_argument("--tag", default="v1")
    parser.add_argument("--output", choices=["text", "json"], default="text")
    parser.add_argument("--keep", action="store_true", help="keep the chain up until Ctrl-C (make lab)")
    parser.add_argument(
        "--harbor", action="store_true", help="with --keep: real Harbor hops (make lab HARBOR=1)"
    )
    args = parser.parse_args(argv)
    if args.keep:
        with tempfile.TemporaryDirectory(prefix="layerwatch-lab-") as tmp:
            sys.exit((keep_up_harbor if args.harbor else keep_up)(Path(tmp)))
    status = run(args.repository, args.tag, args.output)
    if status == 1:
        sys.exit(0)  # "some hop unhealthy" is what the demo sets out to show
    sys.exit(1 if status == 0 else status)


if __name__ == "__main__":
    main()
