"""The HTTP side: ``/metrics``, the status page at ``/``, ``/api/v1/status`` and ``/healthz``.

The status page is what a person opens while debugging a chain: one matrix per chain, artifacts
down and hops across, each cell coloured by verdict, and a failing cell saying which hop, which
repository path, which layer and why, and when it was last checked. Server-rendered HTML with no
external assets, so it works in an air-gapped cluster.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import html
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web

from layerwatch import __version__
from layerwatch.chain import Chain
from layerwatch.metrics import Metrics
from layerwatch.store import ResultStore, TargetStatus

__all__ = ["WebServer", "status_document"]

ChainSource = Callable[[], Mapping[str, Chain]]


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _artifact(status: TargetStatus) -> dict[str, Any]:
    target, result = status.target, status.result
    data: dict[str, Any] = {
        "namespace": target.namespace,
        "name": target.name,
        "chain": status.chain,
        "reference": f"oci://{target.reference}",
        "layerMediaType": target.layer_media_type,
        "pending": status.pending,
    }
    if result is None:
        data.update(
            verdict="Unknown",
            health="unknown",
            blame=None,
            message=status.pending or "not checked yet",
            checkedAt=None,
            hops=[],
        )
        return data
    judgement = result.judgement
    data.update(
        verdict=judgement.verdict.value,
        health=judgement.health.name.lower(),
        blame=judgement.blame,
        message=judgement.message,
        notes=list(judgement.notes),
        checkedAt=_iso(result.finished),
        hops=[
            {
                "name": verdict.hop,
                "repository": observation.repository,
                "location": observation.location,
                "verdict": verdict.verdict.value,
                "health": verdict.verdict.health.name.lower(),
                "message": verdict.message,
                "manifestDigest": observation.digest,
            }
            for observation, verdict in zip(result.observations, judgement.hops, strict=True)
        ],
    )
    return data


def status_document(
    store: ResultStore, chains: Mapping[str, Chain], hop_up: Mapping[tuple[str, str], bool]
) -> dict[str, Any]:
    """``/api/v1/status``: every chain with its hops, every artifact with its per-hop verdicts."""
    artifacts = [_artifact(s) for s in store.snapshot()]
    return {
        "version": __version__,
        "generatedAt": _iso(dt.datetime.now(dt.UTC).timestamp()),
        "summary": {
            "artifacts": len(artifacts),
            "healthy": sum(1 for a in artifacts if a["health"] == "healthy"),
            "unhealthy": sum(1 for a in artifacts if a["health"] == "unhealthy"),
            "unknown": sum(1 for a in artifacts if a["health"] == "unknown"),
        },
        "chains": [
            {
                "name": name,
                "interval": chain.interval,
                "mode": chain.mode.value,
                "hops": [
                    {"name": h.name, "url": h.url, "up": hop_up.get((name, h.name))} for h in chain.hops
                ],
            }
            for name, chain in sorted(chains.items())
        ],
        "artifacts": artifacts,
    }


_STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:1.5rem 2rem;color:#1b1f24;background:#f6f8fa}
h1{font-size:1.35rem;margin:0 0 .25rem}
h2{font-size:1.1rem;margin:1.6rem 0 .5rem}
h2 small{font-weight:400;color:#57606a;font-size:.85rem;margin-left:.5rem}
a{color:#0969da}
.sub{color:#57606a;margin-bottom:1rem}
table{border-collapse:collapse;width:100%;background:#fff;table-layout:fixed}
col.artifact{width:20%}
th,td{border:1px solid #d0d7de;padding:.5rem .65rem;vertical-align:top;text-align:left}
thead th{background:#eaeef2;font-weight:600}
tbody th{background:#f6f8fa;font-weight:600}
th small{display:block;font-weight:400;color:#57606a;overflow-wrap:anywhere}
td{border-left-width:5px}
td.healthy{background:#dafbe1;border-left-color:#2da44e}
td.unhealthy{background:#ffebe9;border-left-color:#cf222e}
td.unknown{background:#fff8c5;border-left-color:#bf8700}
td.none{background:#f6f8fa;color:#8c959f}
.verdict{font-weight:700;font-size:15px}
td.unhealthy .verdict{color:#a40e26}
td.unknown .verdict{color:#7d4e00}
.blamed{display:inline-block;margin-left:.4rem;padding:0 .45rem;border-radius:1rem;vertical-align:2px;
 background:#cf222e;color:#fff;font-size:11px;font-weight:600}
td.unknown .blamed{background:#9a6700}
.msg{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:12.5px;margin:.3rem 0;
 overflow-wrap:anywhere}
.when{color:#57606a;font-size:12px}
.up{color:#1a7f37}
.down{color:#cf222e}
.pill{display:inline-block;padding:0 .55rem;border-radius:1rem;background:#eaeef2;margin-right:.4rem}
.pill.bad{background:#ffebe9;color:#a40e26}
.pill.warn{background:#fff8c5}
.pill.good{background:#dafbe1;color:#116329}
.legend{color:#57606a;font-size:12px;margin-top:.5rem}
"""


def _cell(hop: Mapping[str, Any] | None, checked: str | None, blame: str | None) -> str:
    if hop is None:
        return '<td class="none">not on pull path</td>'
    health = hop["health"]
    blamed = health != "healthy" and hop["name"] == blame
    body = f'<div class="verdict">{html.escape(hop["verdict"])}'
    if blamed:
        body += '<span class="blamed" title="the hop nearest the origin with this problem">blamed</span>'
    body += "</div>"
    if health != "healthy":
        body += f'<div class="msg">{html.escape(hop["message"])}</div>'
    body += f'<div class="when">checked {html.escape(checked or "-")}</div>'
    attributes = (
        f'class="{health}" data-hop="{html.escape(hop["name"])}" data-verdict="{html.escape(hop["verdict"])}"'
        + (' data-blamed="true"' if blamed else "")
    )
    return f"<td {attributes}>{body}</td>"


def status_page(document: Mapping[str, Any]) -> str:
    summary = document["summary"]
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        '<meta name=viewport content="width=device-width,initial-scale=1">',
        f"<title>layerwatch</title><style>{_STYLE}</style></head><body>",
        "<h1>layerwatch: artifacts through their proxy chains</h1>",
        f'<div class="sub">generated {html.escape(document["generatedAt"])} · '
        f"version {html.escape(document['version'])} · "
        f'<span class="pill">{summary["artifacts"]} artifacts</span>'
        f'<span class="pill good">{summary["healthy"]} healthy</span>'
        f'<span class="pill bad">{summary["unhealthy"]} unhealthy</span>'
        f'<span class="pill warn">{summary["unknown"]} unknown</span>'
        ' · <a href="api/v1/status">JSON</a> · <a href="metrics">metrics</a></div>',
    ]
    for chain in document["chains"]:
        hops = chain["hops"]
        name = html.escape(chain["name"])
        parts.append(
            f'<h2 id="chain-{name}">chain {name}'
            f"<small>{len(hops)} hops, edge first · checked every {chain['interval']:g}s"
            f" · mode {html.escape(chain['mode'])}</small></h2>"
        )
        parts.append('<table><colgroup><col class="artifact"></colgroup><thead><tr><th>artifact</th>')
        for hop in hops:
            up = hop["up"]
            state = (
                ""
                if up is None
                else ('<span class="up">up</span>' if up else '<span class="down">down</span>')
            )
            parts.append(
                f"<th>{html.escape(hop['name'])} {state}<small>{html.escape(hop['url'])}</small></th>"
            )
        parts.append("</tr></thead><tbody>")
        for artifact in (a for a in document["artifacts"] if a["chain"] == chain["name"]):
            who = "/".join(p for p in (artifact["namespace"], artifact["name"]) if p)
            parts.append(
                f'<tr data-artifact="{html.escape(who)}"><th>{html.escape(who)}'
                f"<small>{html.escape(artifact['reference'])}</small>"
                + (f"<small>{html.escape(artifact['pending'])}</small>" if artifact["pending"] else "")
                + "".join(
                    f'<small class="note">{html.escape(note)}</small>' for note in artifact.get("notes", ())
                )
                + "</th>"
            )
            by_hop = {h["name"]: h for h in artifact["hops"]}
            parts += [
                _cell(by_hop.get(hop["name"]), artifact["checkedAt"], artifact["blame"]) for hop in hops
            ]
            parts.append("</tr>")
        parts.append("</tbody></table>")
    if document["chains"]:
        parts.append(
            '<p class="legend">Each cell is the artifact as a client pulling through that hop gets it. '
            "<b>blamed</b> marks the hop nearest the origin with the problem: hops in front of it "
            "only pass it on. Times are UTC.</p>"
        )
    else:
        parts.append("<p>No chains configured yet.</p>")
    parts.append("</body></html>")
    return "".join(parts)


class WebServer:
    """Serves the metrics port; ``chains`` and ``healthy`` are callables so shells stay in charge."""

    def __init__(
        self, metrics: Metrics, chains: ChainSource, *, healthy: Callable[[], bool] = lambda: True
    ) -> None:
        self.metrics, self.chains, self.healthy = metrics, chains, healthy
        self.app = web.Application()
        self.app.add_routes(
            [
                web.get("/", self._page),
                web.get("/api/v1/status", self._status),
                web.get("/metrics", self._metrics),
                web.get("/healthz", self._health),
            ]
        )
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    def _document(self) -> dict[str, Any]:
        return status_document(self.metrics.store, self.chains(), self.metrics.hop_up())

    # Rendering grows with the number of targets (about 70 ms for /metrics at 1,000), so it runs in
    # a worker thread instead of pausing every check; the store and the metrics are lock-protected.

    async def _page(self, _: web.Request) -> web.Response:
        page = await asyncio.to_thread(lambda: status_page(self._document()))
        return web.Response(text=page, content_type="text/html")

    async def _status(self, _: web.Request) -> web.Response:
        return web.json_response(await asyncio.to_thread(self._document))

    async def _metrics(self, _: web.Request) -> web.Response:
        return web.Response(
            body=await asyncio.to_thread(self.metrics.exposition),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )

    async def _health(self, _: web.Request) -> web.Response:
        ok = self.healthy()
        return web.json_response({"status": "ok" if ok else "unhealthy"}, status=200 if ok else 503)

    async def start(self, host: str, port: int) -> int:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else port
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
