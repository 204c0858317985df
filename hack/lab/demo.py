"""``python -m lab.demo``: a broken core hop on a local chain, found by ``layerwatch check``.

Starts a `LocalChain`, pushes a Flux artifact to the origin, drops its content layer at the core
gateway before anything pulls it (so the edge cannot have it cached), then runs
``layerwatch check --chain <file> oci://<edge>/p-core/p-ghcr/org/app:v1`` and exits with its status.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from lab.artifacts import push_flux_artifact
from lab.chain import LocalChain

__all__ = ["main"]

_REPO_ROOT = Path(__file__).resolve().parents[2]
CHECK_TIMEOUT = 120.0


def layerwatch_command() -> list[str]:
    """The installed ``layerwatch`` script, else the CLI module from this checkout."""
    if script := shutil.which("layerwatch"):
        return [script]
    return [sys.executable, "-c", "import sys; from layerwatch.cli import main; sys.exit(main())"]


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
    args = parser.parse_args(argv)
    status = run(args.repository, args.tag, args.output)
    if status == 1:
        sys.exit(0)  # "some hop unhealthy" is what the demo sets out to show
    sys.exit(1 if status == 0 else status)


if __name__ == "__main__":
    main()
