"""The ``layerwatch`` command: ``check``, ``inspect``, ``serve`` and ``operator``.

A thin shell: parse arguments, build the chain and clients, call the engine, print, exit with the
SPEC 6 status. Every expected failure (bad reference, unreadable chain file, ...) is one line on
stderr and exit status 2; no traceback reaches the user.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from layerwatch import __version__
from layerwatch import manifest as manifests
from layerwatch.chain import Chain, ChainError, HopTarget, Mode
from layerwatch.check import check_target
from layerwatch.config import (
    FileSettings,
    chain_from_hop_flags,
    direct_hop_options,
    load_chain_file,
)
from layerwatch.reference import Reference, ReferenceError
from layerwatch.registry import RegistryClient, RegistryError, RegistryNotFound
from layerwatch.report import describe_artifact, exit_code, to_json, to_text
from layerwatch.settings import EngineSettings, SettingsError
from layerwatch.verdict import describe_fault

__all__ = ["main"]

EXIT_USAGE = 2


class UsageError(Exception):
    """Bad input: printed as one line, exit status 2."""


def _settings(args: argparse.Namespace) -> FileSettings:
    return FileSettings(
        docker_config=Path(args.docker_config) if args.docker_config else None,
        ca_file=Path(args.ca_file) if args.ca_file else None,
        insecure=args.insecure,
    )


def _chain(args: argparse.Namespace, reference: Reference) -> Chain:
    settings = _settings(args)
    if args.chain and args.hop:
        raise UsageError("give --chain or --hop, not both")
    if args.chain:
        return load_chain_file(Path(args.chain), settings)
    if args.hop:
        return chain_from_hop_flags(args.hop, settings)
    scheme = "http" if args.plain_http else "https"
    return Chain.single(reference, scheme=scheme, **direct_hop_options(reference.registry, settings))


@contextlib.asynccontextmanager
async def _clients(
    path: Sequence[HopTarget], args: argparse.Namespace
) -> AsyncIterator[dict[str, RegistryClient]]:
    settings = EngineSettings.from_args(args)
    clients = {t.hop.name: RegistryClient.for_hop(t.hop, settings) for t in path}
    try:
        yield clients
    finally:
        await asyncio.gather(*(c.aclose() for c in clients.values()))


@contextlib.asynccontextmanager
async def _progress(enabled: bool, text: str) -> AsyncIterator[None]:
    """A spinner on stderr while a slow check runs (only on a terminal, only after 0.8 s)."""
    if not enabled:
        yield
        return

    async def spin() -> None:
        await asyncio.sleep(0.8)
        for frame in itertools.cycle("|/-\\"):
            sys.stderr.write(f"\r{frame} {text}")
            sys.stderr.flush()
            await asyncio.sleep(0.2)

    task = asyncio.create_task(spin())
    try:
        yield
    finally:
        task.cancel()
        sys.stderr.write("\r\033[K")
        sys.stderr.flush()


def _reference(text: str) -> Reference:
    try:
        return Reference.parse(text)
    except ReferenceError as exc:
        raise UsageError(f"invalid reference: {exc}") from None


async def _check(args: argparse.Namespace) -> int:
    reference = _reference(args.ref)
    chain = _chain(args, reference)
    path = chain.pull_path(reference)
    mode = Mode(args.mode) if args.mode else chain.mode
    async with (
        _clients(path, args) as clients,
        _progress(
            args.output == "text" and sys.stderr.isatty(), f"checking {reference} over {len(path)} hops"
        ),
    ):
        result = await check_target(
            reference, path, clients, mode=mode, layer_media_type=args.layer_media_type
        )
    if args.output == "json":
        print(json.dumps(to_json(result), indent=2))
    else:
        print(to_text(result))
    return exit_code(result)


async def _inspect(args: argparse.Namespace) -> int:
    reference = _reference(args.ref)
    chain = _chain(args, reference)
    target = chain.pull_path(reference)[0]
    async with _clients([target], args) as clients:
        client = clients[target.hop.name]
        try:
            fetched = await client.fetch_manifest(target.repository, reference.ref, client.budget())
        except RegistryNotFound:
            print(f"{target.location}: {reference.ref} not found (404)", file=sys.stderr)
            return 1
        except RegistryError as exc:
            print(f"{target.location}: {describe_fault(exc.fault)}", file=sys.stderr)
            return 3
    digest = fetched.digest()
    try:
        parsed = manifests.parse(fetched.body, fetched.media_type)
    except manifests.ManifestError as exc:
        print(f"{target.location}: manifest {digest} is unreadable: {exc}", file=sys.stderr)
        return 1
    print(describe_artifact(f"{target.location}:{reference.ref}", digest, parsed, args.layer_media_type))
    return 0


def _add_chain_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ref", help="oci://host/path:tag, host/path@sha256:..., or host/path:tag")
    parser.add_argument("--chain", metavar="FILE", help="YAML file holding one ProxyChain document")
    parser.add_argument(
        "--hop",
        action="append",
        default=[],
        metavar="NAME=URL",
        help="a hop, edge first, origin last (repeat)",
    )
    parser.add_argument(
        "--layer-media-type", metavar="MT", help="the OCIRepository's layerSelector.mediaType"
    )
    parser.add_argument(
        "--docker-config", metavar="PATH", help="docker config.json with registry credentials"
    )
    parser.add_argument("--ca-file", metavar="PATH", help="PEM CA bundle trusted for every hop")
    parser.add_argument("--insecure", action="store_true", help="skip TLS verification")
    parser.add_argument(
        "--plain-http", action="store_true", help="without a chain: talk plain HTTP to the registry"
    )
    EngineSettings.add_arguments(parser)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="layerwatch", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--version", action="version", version=f"layerwatch {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="verify one artifact through every hop now")
    _add_chain_options(check)
    check.add_argument("--mode", choices=[m.value for m in Mode], help="full (default) or head")
    check.add_argument("--output", "-o", choices=["text", "json"], default="text")
    inspect = commands.add_parser("inspect", help="show an artifact's structure and the layer Flux extracts")
    _add_chain_options(inspect)
    serve = commands.add_parser(
        "serve", help="check targets on a schedule and serve /metrics, without Kubernetes"
    )
    serve.add_argument("--config", required=True, metavar="FILE", help="ProxyChain and Target documents")
    serve.add_argument("--metrics-port", type=int, default=9090)
    serve.add_argument("--metrics-address", default="0.0.0.0")  # noqa: S104 - a server in a pod
    serve.add_argument("--docker-config", metavar="PATH")
    serve.add_argument("--ca-file", metavar="PATH")
    serve.add_argument("--insecure", action="store_true")
    EngineSettings.add_arguments(serve)
    serve.add_argument("--log-format", choices=["text", "json"], default="text")
    operator = commands.add_parser("operator", help="run the Kubernetes operator (kopf)")
    operator.add_argument("options", nargs="*", help="see: layerwatch operator --help")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["operator"]:  # kopf's own options pass through untouched
        from layerwatch.kube.main import run_operator

        return run_operator(arguments[1:])
    args = _parser().parse_args(arguments)
    try:
        if args.command == "check":
            return asyncio.run(_check(args))
        if args.command == "inspect":
            return asyncio.run(_inspect(args))
        if args.command == "serve":
            from layerwatch.serve import run_serve

            return run_serve(args, _settings(args))
    except (UsageError, ChainError, SettingsError) as exc:
        print(f"layerwatch: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    raise AssertionError(f"unhandled command {args.command}")  # argparse makes this impossible


if __name__ == "__main__":
    sys.exit(main())
