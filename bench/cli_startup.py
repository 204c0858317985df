"""CPU seconds a ``layerwatch`` process spends, against the bare interpreter's own start-up.

A CI job that checks 20 artifacts pays the start-up of every process it runs, so what a command
imports before its first request matters. This measures, as user + system CPU of the child
process (``getrusage(RUSAGE_CHILDREN)``), the median of ``--runs`` runs of each of these (the
first three taken in turns, so a busy moment of the box hits them alike):

- ``python3 -c pass``: the floor every Python program pays;
- ``layerwatch --help``: argument parsing only (should stay within 3x the floor);
- ``python3 -c "import httpx, httpx_aiohttp, aiohttp"``: the HTTP stack any check loads;
- ``layerwatch check --plain-http ORIGIN/REPO:TAG``: a one-hop check of a small Flux artifact
  against the lab's origin (full mode: manifest and both blobs downloaded and hashed);
- ``--artifacts`` such artifacts (default 20) checked by one ``layerwatch check REF...`` process,
  against one process per artifact (what a CI job paid before several references per run).

``layerwatch`` runs as its console script does (``from layerwatch.cli import main``) from this
checkout. Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
from collections.abc import Sequence

from benchlib import REPO, host_info

LAYERWATCH = "import sys; from layerwatch.cli import main; sys.exit(main())"


def cpu_seconds(command: Sequence[str], env: dict[str, str], *, expect: int = 0) -> float:
    """User + system CPU of one run of ``command`` (and its children)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != expect:
        raise SystemExit(f"{' '.join(command)} exited {done.returncode}: {done.stderr.strip()[-400:]}")
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def measure(command: Sequence[str], env: dict[str, str], runs: int) -> dict[str, float]:
    return interleaved({"": command}, env, runs)[""]


def interleaved(
    commands: dict[str, Sequence[str]], env: dict[str, str], runs: int
) -> dict[str, dict[str, float]]:
    """Each command ``runs`` times, taking turns, so a busy moment of the box hits all of them."""
    for command in commands.values():
        cpu_seconds(command, env)  # warm the page cache and the .pyc files
    samples: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(runs):
        for name, command in commands.items():
            samples[name].append(cpu_seconds(command, env))
    return {
        name: {"median": round(statistics.median(values), 4), "min": round(min(values), 4)}
        for name, values in samples.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=15, help="runs per command (median reported)")
    parser.add_argument("--artifacts", type=int, default=20, help="artifacts for the one-process comparison")
    parser.add_argument("--no-lab", action="store_true", help="skip the checks (no registry)")
    args = parser.parse_args()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "operator"), env.get("PYTHONPATH", "")])
    env["DOCKER_CONFIG"] = "/nonexistent"
    # An installed layerwatch runs from its .pyc files (pip compiles them): let the warm-up runs
    # write them, or every run would compile every module it imports from source.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    python = sys.executable
    load = os.getloadavg()[0]
    results: dict[str, object] = dict(
        interleaved(
            {
                "python_c_pass": [python, "-c", "pass"],
                "layerwatch_help": [python, "-c", LAYERWATCH, "--help"],
                "import_http_stack": [python, "-c", "import httpx, httpx_aiohttp, aiohttp"],
            },
            env,
            args.runs,
        )
    )
    results["loadavg_1m"] = [round(load, 2), round(os.getloadavg()[0], 2)]
    if not args.no_lab:
        from lab.artifacts import push_flux_artifact
        from lab.chain import LocalChain

        with LocalChain() as chain:
            repositories = [f"bench/startup-{n}" for n in range(max(args.artifacts, 1))]
            for repository in repositories:
                push_flux_artifact(chain.push_address, repository, "v1")
            references = [chain.reference(repository, "v1", hop="origin") for repository in repositories]
            check = [python, "-c", LAYERWATCH, "check", "--plain-http"]
            results["one_hop_check"] = measure([*check, references[0]], env, args.runs)
            results["artifacts"] = len(references)
            results["one_process_for_all"] = measure([*check, *references], env, max(args.runs // 5, 3))
            results["one_process_each_total"] = round(
                sum(cpu_seconds([*check, ref], env) for ref in references), 4
            )
    floor = results["python_c_pass"]["median"]  # type: ignore[index]
    help_cost = results["layerwatch_help"]["median"]  # type: ignore[index]
    results["help_over_python"] = round(help_cost / floor, 2) if floor else None
    results["help_within_3x"] = help_cost <= 3 * floor
    results["host"] = host_info()
    results["runs"] = args.runs
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
