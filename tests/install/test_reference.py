"""docs/reference.md names every CLI flag, verdict, metric, CRD field and Helm value the code has.

So the reference cannot fall behind: a new flag, metric or field without a line in it fails here.
Nothing in the docs or the code's comments points outside the repository either.
"""

from __future__ import annotations

import argparse
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.install.conftest import CHART

from lab.kube import REPO

REFERENCE = (REPO / "docs" / "reference.md").read_text()


def _subcommand_options() -> Iterator[tuple[str, str]]:
    from layerwatch import cli
    from layerwatch.kube import main as operator_main

    parser = cli._parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for name, sub in commands.choices.items():
        if name == "operator":
            sub = operator_main._parser()
        for action in sub._actions:
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    yield name, option


def _mentioned(word: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", REFERENCE) is not None


@pytest.mark.parametrize(("command", "option"), sorted(set(_subcommand_options())))
def test_every_cli_option_is_in_the_reference(command: str, option: str) -> None:
    assert _mentioned(option), f"layerwatch {command} {option} is not in docs/reference.md"


def test_every_verdict_is_in_the_reference() -> None:
    from layerwatch.verdict import Verdict

    for verdict in Verdict:
        assert f"| `{verdict.value}` |" in REFERENCE, verdict


def _exported_metric_names() -> set[str]:
    from layerwatch.metrics import Metrics
    from layerwatch.store import ResultStore

    names = set()
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(Metrics(ResultStore()).exposition().decode()):
        names.add(family.name + "_total" if family.type == "counter" else family.name)
    return names


def test_every_metric_is_in_the_reference_and_no_other() -> None:
    exported = _exported_metric_names()
    documented = set(re.findall(r"\| `(layerwatch_[a-z_]+)` \|", REFERENCE))
    assert exported == documented


def _schema_paths(schema: dict[str, Any], prefix: str) -> Iterator[str]:
    for name, sub in (schema.get("properties") or {}).items():
        path = f"{prefix}.{name}"
        yield path
        if sub.get("type") == "array" and "items" in sub and not path.endswith("conditions"):
            yield from _schema_paths(sub["items"], path + "[]")
        elif sub.get("type") == "object":
            yield from _schema_paths(sub, path)


def test_every_proxychain_field_is_in_the_reference() -> None:
    """A field is named by its path, or by its name on the line of its parent's path."""
    (crd,) = yaml.safe_load_all((REPO / "crds" / "proxychain.yaml").read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
    lines = REFERENCE.splitlines()
    missing = []
    for root in ("spec", "status"):
        for path in _schema_paths(schema[root], root):
            parent, _, leaf = path.rpartition(".")
            if f"`{path}`" in REFERENCE:
                continue
            if not any(f"`{parent}" in line and leaf in line for line in lines):
                missing.append(path)
    assert not missing, f"ProxyChain fields missing from docs/reference.md: {missing}"


def _value_paths(values: dict[str, Any], prefix: str = "") -> Iterator[str]:
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and key != "resources":
            yield from _value_paths(value, path + ".")
        else:
            yield path


def test_every_helm_value_is_in_the_reference() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    missing = [path for path in _value_paths(values) if f"`{path}`" not in REFERENCE]
    assert not missing, missing


def test_docs_and_comments_never_point_outside_the_repository() -> None:
    """Nothing cites the design documents the project started from: the repository explains itself."""
    tracked = subprocess.run(
        ["git", "-C", str(REPO), "ls-files"], capture_output=True, text=True, check=True
    ).stdout.split()
    pattern = re.compile(r"\bSPEC\b(?!_)|\.\./shared|/work/shared|research/[a-z]+\.md")
    hits = []
    for name in tracked:
        path = REPO / name
        if path.suffix not in (".py", ".md", ".yaml", ".yml", ".sh", ".toml", ".json", ".txt", ".tpl"):
            continue
        if not path.is_file() or path == Path(__file__):
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if pattern.search(line):
                hits.append(f"{name}:{number}: {line.strip()[:100]}")
    assert not hits, "\n".join(hits)
