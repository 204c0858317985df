"""``layerwatch serve``: the scheduler, metrics and status page without Kubernetes.

Reads ProxyChain and Target documents from a file, checks every target on its chain's schedule
and serves the metrics port. SIGHUP re-reads the file (a bad file keeps the running plan and
logs why); SIGTERM and SIGINT stop cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from pathlib import Path

from layerwatch.chain import ChainError
from layerwatch.config import FileSettings, ServeConfig, load_serve_config
from layerwatch.logs import configure_logging
from layerwatch.metrics import Metrics
from layerwatch.scheduler import Scheduler, Watch
from layerwatch.settings import EngineSettings
from layerwatch.store import ResultStore
from layerwatch.web import WebServer

__all__ = ["ListenError", "run_serve", "watches"]

logger = logging.getLogger("layerwatch.serve")


class ListenError(Exception):
    """The metrics port cannot be had (in use, no permission): one line for the user, exit 2."""


def watches(config: ServeConfig) -> list[Watch]:
    return [Watch(target, config.chains[target.chain or ""]) for target in config.targets]


async def _serve(path: Path, args: argparse.Namespace, settings: FileSettings, config: ServeConfig) -> int:
    store = ResultStore()
    metrics = Metrics(store)
    scheduler = Scheduler(store=store, metrics=metrics, settings=EngineSettings.from_args(args))
    current = {"config": config}
    web = WebServer(metrics, lambda: current["config"].chains, healthy=scheduler.alive)
    try:
        port = await web.start(args.metrics_address, args.metrics_port)
    except OSError as exc:
        await web.stop()
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise ListenError(f"cannot listen on {args.metrics_address}:{args.metrics_port}: {reason}") from None
    logger.info("serving /metrics, /api/v1/status and the status page on port %d", port, extra={"port": port})
    scheduler.update(config.chains, watches(config))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def reload() -> None:
        try:
            fresh = load_serve_config(path, settings)
        except ChainError as exc:
            logger.error("reload of %s failed, keeping the running plan: %s", path, exc)
            return
        current["config"] = fresh
        scheduler.update(fresh.chains, watches(fresh))
        logger.info("reloaded %s: %d chains, %d targets", path, len(fresh.chains), len(fresh.targets))

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload)
    try:
        await scheduler.run(stop)
    finally:
        await web.stop()
    return 0


def run_serve(args: argparse.Namespace, settings: FileSettings) -> int:
    configure_logging(args.log_format)
    path = Path(args.config)
    config = load_serve_config(path, settings)  # ChainError here is a usage error (exit 2)
    logger.info("loaded %s: %d chains, %d targets", path, len(config.chains), len(config.targets))
    return asyncio.run(_serve(path, args, settings, config))
