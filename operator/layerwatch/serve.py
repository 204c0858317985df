"""``layerwatch serve``: the scheduler, metrics and status page without Kubernetes.

Reads ProxyChain and Target documents from a file, checks every target on its chain's schedule
and serves the metrics port. SIGHUP re-reads the file (a bad file keeps the running plan, logs
why in one line and sets ``layerwatch_config_last_reload_successful`` to 0); SIGTERM and SIGINT
stop cleanly. The file is re-read in a worker thread: parsing it, or a credential helper it
names, must not hold up checks in flight.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import time
from pathlib import Path

from layerwatch.chain import ChainError
from layerwatch.config import FileSettings, ServeConfig, load_serve_config
from layerwatch.logs import configure_logging
from layerwatch.metrics import Metrics
from layerwatch.scheduler import Scheduler, Watch
from layerwatch.settings import EngineSettings
from layerwatch.store import ResultStore
from layerwatch.text import ERROR_LIMIT, one_line
from layerwatch.web import WebServer

__all__ = ["ConfigFile", "ListenError", "run_serve", "watches"]

logger = logging.getLogger("layerwatch.serve")


class ListenError(Exception):
    """The metrics port cannot be had (in use, no permission): one line for the user, exit 2."""


def watches(config: ServeConfig) -> list[Watch]:
    return [Watch(target, config.chains[target.chain or ""]) for target in config.targets]


class ConfigFile:
    """The serve config as running: loaded at start, re-read on SIGHUP, one re-read at a time.

    A file that does not load leaves the running plan as it is, logs one error line and sets
    ``layerwatch_config_last_reload_successful`` to 0 until a good file loads.
    """

    def __init__(
        self, path: Path, settings: FileSettings, config: ServeConfig, scheduler: Scheduler, metrics: Metrics
    ) -> None:
        self.path, self.settings, self.config = path, settings, config
        self._scheduler, self._metrics = scheduler, metrics
        self._one_at_a_time = asyncio.Lock()
        scheduler.update(config.chains, watches(config))
        metrics.set_config_load(True, time.time())

    async def reload(self) -> bool:
        """Re-read the file off the event loop; True when the new plan runs."""
        async with self._one_at_a_time:
            try:
                fresh = await asyncio.to_thread(load_serve_config, self.path, self.settings)
            except ChainError as exc:
                self._metrics.set_config_load(False, time.time())
                message = one_line(str(exc), ERROR_LIMIT)
                logger.error("reload of %s failed, keeping the running plan: %s", self.path, message)
                return False
            self.config = fresh
            self._scheduler.update(fresh.chains, watches(fresh))
            self._metrics.set_config_load(True, time.time())
        logger.info("reloaded %s: %d chains, %d targets", self.path, len(fresh.chains), len(fresh.targets))
        return True


async def _serve(path: Path, args: argparse.Namespace, settings: FileSettings, config: ServeConfig) -> int:
    store = ResultStore()
    metrics = Metrics(store)
    scheduler = Scheduler(store=store, metrics=metrics, settings=EngineSettings.from_args(args))
    running = ConfigFile(path, settings, config, scheduler, metrics)
    web = WebServer(metrics, lambda: running.config.chains, healthy=scheduler.alive)
    try:
        port = await web.start(args.metrics_address, args.metrics_port)
    except OSError as exc:
        await web.stop()
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise ListenError(f"cannot listen on {args.metrics_address}:{args.metrics_port}: {reason}") from None
    logger.info("serving /metrics, /api/v1/status and the status page on port %d", port, extra={"port": port})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    reloads: set[asyncio.Task[bool]] = set()

    def on_hangup() -> None:
        task = loop.create_task(running.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, on_hangup)
    try:
        await scheduler.run(stop)
    finally:
        for task in reloads:
            task.cancel()
        await web.stop()
    return 0


def run_serve(args: argparse.Namespace, settings: FileSettings) -> int:
    configure_logging(args.log_format)
    path = Path(args.config)
    config = load_serve_config(path, settings)  # ChainError here is a usage error (exit 2)
    logger.info("loaded %s: %d chains, %d targets", path, len(config.chains), len(config.targets))
    return asyncio.run(_serve(path, args, settings, config))
