"""The layerwatch command: check, inspect, serve, operator and completion.

A thin shell: parse arguments, build chains and clients, call the engine, print, exit. Every
expected failure (bad reference, unreadable chain file, busy port, ...) is one line on stderr,
plus one error object on stdout with ``-o json``, and exit status 2; no traceback reaches the
user. Each command imports what it needs when it runs, so ``layerwatch --help`` costs little more
than the interpreter's own start-up and the HTTP stack is loaded only by commands that talk HTTP.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence

TYPE_CHECKING = False
"""`typing.TYPE_CHECKING` without importing typing at run time (mypy reads the name alike)."""
if TYPE_CHECKING:
    from typing import Any, NoReturn

    from layerwatch.chain import Chain, Hop, HopTarget, Mode
    from layerwatch.config import FileSettings
    from layerwatch.reference import Reference
    from layerwatch.registry import Endpoint, EndpointState, RegistryClient
    from layerwatch.settings import EngineSettings
    from layerwatch.signatures import Verify
    from layerwatch.verdict import CheckResult

__all__ = ["CommandError", "main"]

EXIT_USAGE = 2


class CommandError(Exception):
    """Bad input: one line, exit status 2. ``kind`` is ``usage`` (the command line) or ``config``."""

    def __init__(self, message: str, kind: str = "usage") -> None:
        super().__init__(message)
        self.kind = kind


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage and exiting, so errors go through one place."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("layerwatch").strip()
        where = f"{command}: " if command else ""
        raise CommandError(f"{where}{message} (see {self.prog} --help)")


class _Version(argparse.Action):
    """``--version`` without importing package metadata on every other run."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> NoReturn:
        from layerwatch import __version__

        print(f"layerwatch {__version__}")
        parser.exit()


def _port(text: str) -> int:
    """A TCP port, 0 (any free port) to 65535."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} must be a port from 0 to 65535")
    return value


def _engine_arguments(parser: argparse.ArgumentParser) -> None:
    """``--timeout``, ``--retries``, ... (``LAYERWATCH_*`` in the environment), shared with the operator."""
    from layerwatch.settings import EngineSettings

    EngineSettings.add_arguments(parser)


def _engine_settings(args: argparse.Namespace) -> EngineSettings:
    """Read first, so a bad ``--timeout`` (``-1``, ``nan``, ``inf``) stops the run before any work."""
    from layerwatch.settings import EngineSettings

    return EngineSettings.from_args(args)


# -- chains, references and jobs ----------------------------------------------------------------------


def _settings(args: argparse.Namespace) -> FileSettings:
    from pathlib import Path

    from layerwatch.config import FileSettings

    return FileSettings(
        docker_config=Path(args.docker_config) if args.docker_config else None,
        ca_file=Path(args.ca_file) if args.ca_file else None,
        insecure=args.insecure,
    )


def _reference(text: str) -> Reference:
    from layerwatch.chain import mask_userinfo
    from layerwatch.reference import Reference, ReferenceError

    if mask_userinfo(text) != text:
        raise CommandError(
            f"invalid reference {mask_userinfo(text)!r}: credentials go in --docker-config or a chain file"
        )
    try:
        return Reference.parse(text)
    except ReferenceError as exc:
        raise CommandError(f"invalid reference {text!r}: {exc}") from None


def _given_chain(args: argparse.Namespace, settings: FileSettings) -> Chain | None:
    """The chain of ``--chain`` or ``--hop``, or None when the references' own registries are used."""
    from pathlib import Path

    from layerwatch.config import chain_from_hop_flags, load_chain_file

    if args.chain and args.hop:
        raise CommandError("give --chain or --hop, not both")
    if args.chain:
        return load_chain_file(Path(args.chain), settings)
    if args.hop:
        return chain_from_hop_flags(args.hop, settings)
    return None


def _direct_chain(args: argparse.Namespace, settings: FileSettings, reference: Reference) -> Chain:
    from layerwatch.chain import Chain
    from layerwatch.config import check_proxies, direct_hop_options

    scheme = "http" if args.plain_http else "https"
    chain = Chain.single(reference, scheme=scheme, **direct_hop_options(reference.registry, settings))
    check_proxies(chain)
    return chain


def _pull_path(chain: Chain, reference: Reference, *, from_flags: bool) -> list[HopTarget]:
    """The hops ``reference`` is checked at; with ``--hop``, every hop given must be one of them."""
    from layerwatch.chain import ChainError

    path = chain.pull_path(reference)
    if from_flags and len(path) < len(chain.hops):
        skipped = [hop.name for hop in chain.hops[: len(chain.hops) - len(path)]]
        raise ChainError(
            f"--hop: {reference.name} points at hop {path[0].hop.name}, so {', '.join(skipped)} before it "
            f"would never be checked; give the hops edge first, origin last"
        )
    return path


class _Job:
    """One reference to check: where it goes, which layer Flux takes, Flux's pinned digest, and
    which signatures to look for."""

    def __init__(
        self,
        reference: Reference,
        path: Sequence[HopTarget],
        mode: Mode,
        layer_media_type: str | None,
        pinned_digest: str | None = None,
        verify: Verify | None = None,
    ) -> None:
        self.reference, self.path, self.mode = reference, list(path), mode
        self.layer_media_type, self.pinned_digest, self.verify = layer_media_type, pinned_digest, verify


def _verification(args: argparse.Namespace) -> Verify | None:
    """``--verify`` and ``--cosign-key`` (None: the Target's, OCIRepository's or chain's own)."""
    from layerwatch.signatures import KeyedCosign, Provider

    if args.cosign_key is None:
        return Provider(args.verify) if args.verify else None
    if args.verify == Provider.NOTATION.value:
        raise CommandError("--cosign-key checks cosign signatures: it does not go with --verify notation")
    from pathlib import Path

    from layerwatch.config import read_file
    from layerwatch.signature_keys import load_public_key

    pem = read_file(Path(args.cosign_key), "--cosign-key")
    try:
        load_public_key(pem)
    except ValueError as exc:
        raise CommandError(f"--cosign-key {args.cosign_key}: {exc}") from None
    return KeyedCosign(pem)


def _jobs_from_files(args: argparse.Namespace) -> list[_Job]:
    """``check REF...`` and ``--targets FILE``: each reference over the chain that applies to it."""
    from pathlib import Path

    from layerwatch.chain import Mode
    from layerwatch.config import load_targets_file

    references = [_reference(text) for text in args.refs]
    settings = _settings(args)
    given = _given_chain(args, settings)
    listed = load_targets_file(Path(args.targets), settings) if args.targets else None
    verify = _verification(args)
    wanted: list[tuple[Reference, Chain, bool, str | None, Verify | None]] = []
    for reference in references:
        chain = given or _direct_chain(args, settings, reference)
        wanted.append((reference, chain, bool(args.hop), args.layer_media_type, None))
    chains, targets = (listed.chains, listed.targets) if listed else ({}, ())
    for target in targets:
        if target.chain is not None:
            chain = chains[target.chain]
            wanted.append((target.reference, chain, False, target.layer_media_type, target.verify))
        else:
            chain = given or _direct_chain(args, settings, target.reference)
            wanted.append((target.reference, chain, bool(args.hop), target.layer_media_type, target.verify))
    if not wanted:
        raise CommandError("check: give at least one REF or --targets FILE (see layerwatch check --help)")
    return [
        _Job(
            reference,
            _pull_path(chain, reference, from_flags=from_flags),
            Mode(args.mode) if args.mode else chain.mode,
            media_type or args.layer_media_type,
            verify=verify or own or chain.verify,
        )
        for reference, chain, from_flags, media_type, own in wanted
    ]


async def _jobs_from_cluster(args: argparse.Namespace) -> list[_Job]:
    """``check --kube``: the OCIRepositories and ProxyChains as the operator would read them."""
    from layerwatch.chain import Mode

    if args.chain or args.hop or args.targets:
        raise CommandError("check --kube reads the chain from the cluster: drop --chain, --hop and --targets")
    if not args.refs:
        raise CommandError("check --kube: give ocirepository/NAME (see layerwatch check --help)")
    from layerwatch.kube.lookup import watches_from_cluster

    verify = _verification(args)
    watches = await watches_from_cluster(args.refs, args.namespace, warn=_warn)
    return [
        _Job(
            watch.target.reference,
            watch.pull_path(),
            Mode(args.mode) if args.mode else watch.chain.mode,
            args.layer_media_type or watch.target.layer_media_type,
            watch.pinned_digest,
            verify or watch.target.verify or watch.chain.verify,
        )
        for watch in watches
    ]


def _warn(message: str) -> None:
    print(f"layerwatch: {message}", file=sys.stderr)


# -- talking to registries ----------------------------------------------------------------------------


def _tracer(hop: str) -> Callable[[str, str, str], None]:
    """``--verbose``: one line per HTTP exchange of a hop. URLs come without query or userinfo."""

    def trace(method: str, url: str, code: str) -> None:
        print(f"> {hop}: {method} {url} -> {code}", file=sys.stderr)

    return trace


class _Clients:
    """Registry clients for a run: one per distinct hop, one endpoint state per registry endpoint.

    Every reference of the run shares them, so tokens are asked once and each endpoint sees at
    most ``endpoint_concurrency`` requests in flight, whatever number of artifacts are checked.
    """

    def __init__(self, settings: EngineSettings, *, verbose: bool) -> None:
        self.settings = settings
        self._verbose = verbose
        self._states: dict[Endpoint, EndpointState] = {}
        self._clients: dict[Hop, RegistryClient] = {}

    def for_path(self, path: Sequence[HopTarget]) -> dict[str, RegistryClient]:
        return {target.hop.name: self.for_hop(target.hop) for target in path}

    def for_hop(self, hop: Hop) -> RegistryClient:
        from layerwatch.registry import EndpointState, RegistryClient, endpoint_of

        if hop not in self._clients:
            if self._verbose:
                who = f"as {hop.credentials.username}, password ***" if hop.credentials else "anonymously"
                _warn(f"hop {hop.name}: {hop.url} {who}" + (", TLS not verified" if hop.insecure else ""))
            endpoint = endpoint_of(hop)
            state = self._states.setdefault(endpoint, EndpointState(endpoint, self.settings))
            self._clients[hop] = RegistryClient(
                state,
                hop.credentials,
                provider=hop.provider,
                on_exchange=_tracer(hop.name) if self._verbose else None,
            )
        return self._clients[hop]

    async def aclose(self) -> None:
        import asyncio

        await asyncio.gather(*(state.aclose() for state in self._states.values()))


def _progress(enabled: bool, text: str) -> Any:
    """A spinner on stderr while a slow check runs (only on a terminal, only after 0.8 s)."""
    import asyncio
    import contextlib
    import itertools

    @contextlib.asynccontextmanager
    async def spinner() -> AsyncIterator[None]:
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

    return spinner()


async def _check(args: argparse.Namespace) -> int:
    import asyncio
    import json

    from layerwatch.check import check_target
    from layerwatch.report import combined_exit_code, combined_json, combined_text, to_json, to_text

    clients = _Clients(_engine_settings(args), verbose=args.verbose)
    jobs = await _jobs_from_cluster(args) if args.kube else _jobs_from_files(args)
    limit = asyncio.Semaphore(clients.settings.parallel_checks)

    async def run(job: _Job) -> CheckResult:
        async with limit:
            return await check_target(
                job.reference,
                job.path,
                clients.for_path(job.path),
                mode=job.mode,
                layer_media_type=job.layer_media_type,
                pinned_digest=job.pinned_digest,
                verify=job.verify,
            )

    what = str(jobs[0].reference) if len(jobs) == 1 else f"{len(jobs)} artifacts"
    spinning = args.output == "text" and not args.verbose and sys.stderr.isatty()
    try:
        async with _progress(spinning, f"checking {what}"):
            results = await asyncio.gather(*(run(job) for job in jobs))
    finally:
        await clients.aclose()
    if args.output == "json":
        report = to_json(results[0]) if len(results) == 1 else combined_json(results)
        print(json.dumps(report, indent=2))
    else:
        print(to_text(results[0]) if len(results) == 1 else combined_text(results))
    return combined_exit_code(results)


async def _inspect(args: argparse.Namespace) -> int:
    import json

    from layerwatch import manifest as manifests
    from layerwatch.registry import RegistryError, RegistryNotFound
    from layerwatch.report import inspect_json
    from layerwatch.verdict import describe_fault

    clients = _Clients(_engine_settings(args), verbose=args.verbose)
    reference = _reference(args.ref)
    settings = _settings(args)
    chain = _given_chain(args, settings) or _direct_chain(args, settings, reference)
    target = _pull_path(chain, reference, from_flags=bool(args.hop))[0]
    client = clients.for_path([target])[target.hop.name]
    budget = client.budget()

    def failed(message: str, status: int) -> int:
        _report_error(message, "registry", json_output=args.output == "json")
        return status

    try:
        fetched = await client.fetch_manifest(target.repository, reference.ref, budget)
        digest = fetched.digest()
        try:
            parsed = manifests.parse(fetched.body, fetched.media_type)
        except manifests.ManifestError as exc:
            return failed(f"{target.location}: manifest {digest} is unreadable: {exc}", 1)
        children: dict[str, manifests.Manifest | str] = {}
        if isinstance(parsed, manifests.Index):
            for child in parsed.manifests[:64]:
                try:
                    body = await client.fetch_manifest(target.repository, child.digest, budget)
                    read = manifests.parse(body.body, body.media_type)
                    children[child.digest] = (
                        read if isinstance(read, manifests.Manifest) else "an index inside an index"
                    )
                except RegistryError as exc:
                    children[child.digest] = describe_fault(exc.fault)
                except manifests.ManifestError as exc:
                    children[child.digest] = str(exc)
    except RegistryNotFound:
        return failed(f"{target.location}: {reference.ref} not found (404)", 1)
    except RegistryError as exc:
        return failed(f"{target.location}: {describe_fault(exc.fault)}", 3)
    finally:
        await clients.aclose()
    data = inspect_json(f"{target.location}:{reference.ref}", digest, parsed, args.layer_media_type, children)
    if args.output == "json":
        print(json.dumps(data, indent=2))
    else:
        from layerwatch.report import describe_artifact

        print(describe_artifact(data))
    return 0


async def _canary(args: argparse.Namespace) -> int:
    """One cold-path canary run of the chain file's ``spec.canary``, as ``serve`` runs it each interval."""
    import json
    from pathlib import Path

    from layerwatch.canary import run_canary
    from layerwatch.config import load_chain_file
    from layerwatch.report import to_json, to_text
    from layerwatch.verdict import Health

    clients = _Clients(_engine_settings(args), verbose=args.verbose)
    chain = load_chain_file(Path(args.chain), _settings(args))
    if chain.canary is None:
        raise CommandError(f"{args.chain}: the ProxyChain has no spec.canary to run", "config")
    try:
        push = clients.for_hop(chain.canary_push_hop())
        run = await run_canary(chain, push, {hop.name: clients.for_hop(hop) for hop in chain.hops})
    finally:
        await clients.aclose()
    if args.output == "json":
        data = {
            "chain": chain.name,
            "tag": run.tag,
            "digest": run.digest,
            "condition": run.condition(0),
            "cleanupWarning": run.cleanup_warning,
            "report": to_json(run.result) if run.result is not None else None,
        }
        print(json.dumps(data, indent=2))
    else:
        print(f"cold path of chain {chain.name}: {run.reason}: {run.message}")
        if run.result is not None:
            print(to_text(run.result))
    return {Health.HEALTHY: 0, Health.UNHEALTHY: 1, Health.UNKNOWN: 3}[run.health]


def _serve(args: argparse.Namespace) -> int:
    from layerwatch.serve import ListenError, run_serve

    try:
        return run_serve(args, _settings(args))
    except ListenError as exc:
        raise CommandError(str(exc), "config") from None


def _completion(args: argparse.Namespace) -> int:
    from layerwatch.completion import script

    print(script(args.shell, _parser()))
    return 0


# -- the command line ---------------------------------------------------------------------------------


def _add_registry_options(parser: argparse.ArgumentParser) -> None:
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
    _add_trust_options(parser)
    parser.add_argument(
        "--plain-http", action="store_true", help="without a chain: talk plain HTTP to the registry"
    )
    _add_output_options(parser)
    _engine_arguments(parser)


def _add_trust_options(parser: argparse.ArgumentParser) -> None:
    """Credentials and TLS for hops that do not bring their own."""
    parser.add_argument(
        "--docker-config", metavar="PATH", help="docker config.json with registry credentials"
    )
    parser.add_argument("--ca-file", metavar="PATH", help="PEM CA bundle trusted for every hop")
    parser.add_argument("--insecure", action="store_true", help="skip TLS verification")


def _add_output_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-o", "--output", choices=["text", "json"], default="text", help="text (default) or json"
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="print each registry request and its status on stderr"
    )


_CHECK_EPILOG = """\
exit status: 0 every hop healthy, 1 some hop unhealthy, 3 none unhealthy but some could not be
checked, 2 usage or configuration error. With several references, the worst of them.

with -o json, one reference prints its report object; several print
{"verdict": WORST, "counts": {...}, "checks": [REPORT, ...]}; an error prints
{"error": {"message": "...", "kind": "usage" or "config"}}.
"""


def _check_arguments(check: argparse.ArgumentParser) -> None:
    check.add_argument(
        "refs",
        nargs="*",
        metavar="REF",
        help="oci://host/path:tag, host/path@sha256:..., host/path:tag; with --kube, ocirepository/NAME",
    )
    check.add_argument(
        "--targets", metavar="FILE", help="YAML file of Target documents (and ProxyChains they name)"
    )
    check.add_argument("--mode", choices=["full", "head"], help="full (default) or head")
    check.add_argument(
        "--kube",
        action="store_true",
        help="read the OCIRepository, its ProxyChain and their Secrets from the current kubeconfig",
    )
    check.add_argument("-n", "--namespace", help="with --kube: the OCIRepository's namespace")
    check.add_argument(
        "--verify",
        choices=["cosign", "notation"],
        help="the OCIRepository's spec.verify.provider: also check its signatures at every hop",
    )
    check.add_argument(
        "--cosign-key",
        metavar="PATH",
        help="also check that a cosign signature verifies with this public key (optional, slower)",
    )
    _add_registry_options(check)


def _inspect_arguments(inspect: argparse.ArgumentParser) -> None:
    inspect.add_argument(
        "ref", metavar="REF", help="oci://host/path:tag, host/path@sha256:..., host/path:tag"
    )
    _add_registry_options(inspect)


def _serve_arguments(serve: argparse.ArgumentParser) -> None:
    serve.add_argument("--config", required=True, metavar="FILE", help="ProxyChain and Target documents")
    serve.add_argument("--metrics-port", type=_port, default=9090, metavar="PORT", help="default 9090")
    serve.add_argument("--metrics-address", default="0.0.0.0", metavar="ADDRESS")  # noqa: S104 - in a pod
    _add_trust_options(serve)
    serve.add_argument("--log-format", choices=["text", "json"], default="text")
    _engine_arguments(serve)


def _canary_arguments(canary: argparse.ArgumentParser) -> None:
    canary.add_argument(
        "--chain", required=True, metavar="FILE", help="YAML file holding one ProxyChain with spec.canary"
    )
    _add_trust_options(canary)
    _add_output_options(canary)
    _engine_arguments(canary)


def _operator_arguments(operator: argparse.ArgumentParser) -> None:
    operator.add_argument("options", nargs="*", help="see: layerwatch operator --help")


def _completion_arguments(completion: argparse.ArgumentParser) -> None:
    completion.add_argument("shell", choices=["bash", "zsh", "fish"])


_ARGUMENTS: dict[str, Callable[[argparse.ArgumentParser], None]] = {
    "check": _check_arguments,
    "inspect": _inspect_arguments,
    "serve": _serve_arguments,
    "canary": _canary_arguments,
    "operator": _operator_arguments,
    "completion": _completion_arguments,
}


def _chosen_command(arguments: Sequence[str]) -> str:
    """The command a command line names: its first word that is not an option (the top level's
    options, ``--help`` and ``--version``, take no value), or "" when it names none."""
    return next((argument for argument in arguments if not argument.startswith("-")), "")


def _parser(command: str | None = None) -> argparse.ArgumentParser:
    """Every command with its arguments; given ``command``, only that one gets its arguments ("":
    none does).

    The others keep their names and help lines, so ``layerwatch --help`` and a misspelt command
    read the same, without building (and importing for) arguments the run cannot use.
    """
    parser = _Parser(
        prog="layerwatch",
        description="Check Flux OCI artifacts through every hop of their registry proxy chain.",
    )
    parser.add_argument("--version", action=_Version)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parsers = {
        "check": commands.add_parser(
            "check",
            help="verify artifacts through every hop now",
            description="Verify artifacts through every hop of their chain now.",
            epilog=_CHECK_EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        ),
        "inspect": commands.add_parser(
            "inspect",
            help="show an artifact's structure and the layer Flux extracts",
            description="Show an artifact's structure and which layer Flux extracts.",
        ),
        "serve": commands.add_parser(
            "serve",
            help="check targets on a schedule and serve /metrics, without Kubernetes",
            description="Check targets on a schedule and serve /metrics and the status page.",
        ),
        "canary": commands.add_parser(
            "canary",
            help="push a fresh artifact at the origin and pull it through every hop, edge first",
            description="Run the chain's cold-path canary (spec.canary) once: push a fresh artifact at the "
            "origin, pull it through every hop edge first, clean up old canary tags.",
            epilog="exit status: 0 the cold path is healthy, 1 some hop broke the canary, 3 it could not "
            "be checked (e.g. the push was refused), 2 usage or configuration error.",
        ),
        "operator": commands.add_parser(
            "operator", help="run the Kubernetes operator (kopf)", add_help=False
        ),
        "completion": commands.add_parser(
            "completion",
            help="print a shell completion script",
            description='Print a completion script: eval "$(layerwatch completion bash)" in ~/.bashrc, '
            "source <(layerwatch completion zsh) in ~/.zshrc, or "
            "layerwatch completion fish > ~/.config/fish/completions/layerwatch.fish.",
        ),
    }
    for name, subparser in parsers.items():
        if command is None or name == command:
            _ARGUMENTS[name](subparser)
    return parser


def _run_async(command: Callable[[argparse.Namespace], Coroutine[Any, Any, int]]) -> Command:
    def run(args: argparse.Namespace) -> int:
        import asyncio

        return asyncio.run(command(args))

    return run


Command = Callable[[argparse.Namespace], int]
_COMMANDS: dict[str, Command] = {
    "check": _run_async(_check),
    "inspect": _run_async(_inspect),
    "canary": _run_async(_canary),
    "serve": _serve,
    "completion": _completion,
}


def _json_requested(arguments: Sequence[str]) -> bool:
    """Whether ``-o json`` was asked for, read before argparse (whose errors must honour it too)."""
    for position, argument in enumerate(arguments):
        if argument in ("-o", "--output") and arguments[position + 1 : position + 2] == ["json"]:
            return True
        if argument in ("--output=json", "-ojson", "-o=json"):
            return True
    return False


def _report_error(message: str, kind: str, *, json_output: bool) -> None:
    """One line on stderr; with ``-o json`` also ``{"error": {...}}`` on stdout for scripts."""
    from layerwatch.text import ERROR_LIMIT, one_line

    message = one_line(message, ERROR_LIMIT)  # it may quote a file's or a registry's text
    _warn(message)
    if json_output:
        import json

        print(json.dumps({"error": {"message": message, "kind": kind}}))


def _error_kind(exc: Exception) -> str | None:
    """``usage`` or ``config`` for the failures a user can fix; None for a bug (which must show)."""
    if isinstance(exc, CommandError):
        return exc.kind
    settings = sys.modules.get("layerwatch.settings")  # loaded by the parser
    if settings is not None and isinstance(exc, settings.SettingsError):
        return "usage"
    chain = sys.modules.get("layerwatch.chain")  # loaded by every command that can raise ChainError
    if chain is not None and isinstance(exc, chain.ChainError):
        return "config"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["operator"]:  # kopf's own options pass through untouched
        from layerwatch.kube.main import run_operator

        return run_operator(arguments[1:])
    try:
        args = _parser(_chosen_command(arguments)).parse_args(arguments)
        return _COMMANDS[args.command](args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `layerwatch ... | head`: the reader left; say nothing more
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as exc:
        kind = _error_kind(exc)
        if kind is None:
            raise
        _report_error(str(exc), kind, json_output=_json_requested(arguments))
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
