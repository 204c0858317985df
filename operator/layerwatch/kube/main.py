"""``layerwatch operator``: kopf's run options plus layerwatch's own, then ``kopf.run``."""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import logging
import os
import random
import socket
import sys
from collections.abc import Sequence
from typing import Any, cast

import kopf

from layerwatch.chain import ChainError
from layerwatch.kube import notify
from layerwatch.kube.api import load_client_config
from layerwatch.kube.service import OperatorOptions
from layerwatch.kube.targets import pod_ordinal
from layerwatch.logs import configure_logging
from layerwatch.registry.proxies import check_environment_proxies
from layerwatch.settings import EngineSettings, SettingsError

__all__ = ["run_operator"]

_M_ARENA_MAX = -8
"""glibc's ``mallopt`` parameter for the number of malloc arenas."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="layerwatch operator")
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "-n", "--namespace", action="append", default=[], help="watch these namespaces (repeat)"
    )
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace (default)")
    parser.add_argument("--standalone", action="store_true", help="no peering: always active")
    parser.add_argument("--peering", metavar="NAME", help="kopf peering object for HA (active/standby)")
    parser.add_argument(
        "--priority",
        type=int,
        default=os.environ.get("LAYERWATCH_PRIORITY"),
        help="peering priority; distinct per replica (default with --peering: random)",
    )
    parser.add_argument(
        "--peering-lifetime",
        type=int,
        default=int(os.environ.get("LAYERWATCH_PEERING_LIFETIME", 60)),
        metavar="SECONDS",
        help="how long a silent peer counts as alive (failover time)",
    )
    parser.add_argument(
        "--liveness", metavar="URL", help="kopf liveness endpoint, e.g. http://0.0.0.0:8080/healthz"
    )
    parser.add_argument(
        "--metrics-port", type=int, default=int(os.environ.get("LAYERWATCH_METRICS_PORT", 9090))
    )
    parser.add_argument("--metrics-address", default=os.environ.get("LAYERWATCH_METRICS_ADDRESS", "0.0.0.0"))  # noqa: S104
    parser.add_argument(
        "--shard-index",
        type=int,
        default=os.environ.get("LAYERWATCH_SHARD_INDEX"),
        help="this replica's shard (default: the ordinal of a StatefulSet pod named by $POD_NAME, else 0)",
    )
    parser.add_argument("--shard-count", type=int, default=int(os.environ.get("LAYERWATCH_SHARD_COUNT", 1)))
    EngineSettings.add_arguments(parser)
    parser.add_argument(
        "--watch-label-selector",
        default=os.environ.get("LAYERWATCH_WATCH_LABEL_SELECTOR"),
        metavar="SELECTOR",
        help="only OCIRepositories matching this label selector, as Flux's own --watch-label-selector "
        "(e.g. sharding.fluxcd.io/key=shard1)",
    )
    parser.add_argument(
        "--secrets-namespace",
        default=os.environ.get("LAYERWATCH_NAMESPACE", "layerwatch"),
        help="namespace of ProxyChain Secrets whose secretRef names none",
    )
    notify.add_arguments(parser)
    parser.add_argument(
        "--log-level",
        choices=["debug", "info", "warning"],
        default=os.environ.get("LAYERWATCH_LOG_LEVEL", "info"),
        help="debug also says why each OCIRepository is not watched",
    )
    parser.add_argument(
        "--log-format", choices=["text", "json"], default=os.environ.get("LAYERWATCH_LOG_FORMAT", "text")
    )
    return parser


def _shard_index(given: int | str | None, count: int) -> int:
    """The flag or env when set; else, sharded, the StatefulSet ordinal in ``$POD_NAME`` (one
    pod template serves every shard); else 0."""
    if given is not None:
        return int(given)
    ordinal = pod_ordinal(os.environ.get("POD_NAME", "")) if count > 1 else None
    return ordinal if ordinal is not None else 0


def _few_malloc_arenas() -> None:
    """Cap glibc's malloc arenas before any thread starts.

    Apiserver calls run in worker threads, and glibc gives each thread its own arena (up to 8 per
    core), which holds on to freed memory: at 10,000 OCIRepositories that is tens of MB of RSS
    for nothing. Two arenas cost no measurable speed here. Elsewhere than glibc this does nothing.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(_M_ARENA_MAX, 2)


def run_operator(argv: Sequence[str]) -> int:
    _few_malloc_arenas()
    args = _parser().parse_args(list(argv))
    shard_index = _shard_index(args.shard_index, args.shard_count)
    if not 0 <= shard_index < max(args.shard_count, 1):
        _parser().error(f"--shard-index must be in [0, {args.shard_count}), not {shard_index}")
    try:
        engine = EngineSettings.from_args(args)
        check_environment_proxies()
    except (SettingsError, ChainError) as exc:
        print(f"layerwatch operator: {exc}", file=sys.stderr)
        return 2
    configure_logging(args.log_format, getattr(logging, args.log_level.upper()))
    # kopf logs every handled watch event at INFO ("Handler ... succeeded"): one line per Flux status
    # update per object. layerwatch logs what it decides; kopf's per-object lines only when they matter.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    try:
        load_client_config().close()  # fail fast and plainly, before kopf retries forever
    except Exception as exc:
        print(
            f"layerwatch operator: no usable cluster configuration: {str(exc).splitlines()[0]}",
            file=sys.stderr,
        )
        return 2
    from layerwatch.kube import handlers  # noqa: F401 - registers the handlers with kopf

    options = OperatorOptions(
        metrics_port=args.metrics_port,
        metrics_address=args.metrics_address,
        shard_index=shard_index,
        shard_count=args.shard_count,
        engine=engine,
        watch_label_selector=args.watch_label_selector or None,
        namespace=args.secrets_namespace,
        peering_lifetime=args.peering_lifetime,
        notification_address=args.notification_address,
    )
    priority: int | None = args.priority
    if priority is None and args.peering:
        # Equal priorities make every peer pause, and replicas of one Deployment share their args.
        priority = random.randint(1, 1_000_000)
    kopf.run(
        # kopf would name itself after the OS user, which a pod's arbitrary UID may not have
        # (kopf types the identity as a NewType of str it does not export).
        identity=cast(Any, os.environ.get("POD_NAME") or f"layerwatch@{socket.gethostname()}/{os.getpid()}"),
        standalone=args.standalone,
        peering_name=args.peering,
        priority=priority,
        liveness_endpoint=args.liveness,
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        memo=kopf.Memo(options=options),
    )
    return 0
