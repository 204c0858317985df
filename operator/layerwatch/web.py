"""The HTTP side: ``/metrics``, the status page at ``/``, ``/api/v1/status`` and ``/healthz``.

The status page is what a person opens while debugging a chain: one matrix per chain, artifacts
down and hops across, broken rows first, each cell coloured by verdict, and a failing cell saying
which hop, which repository path, which layer and why, since when, and where the runbook is. The
blamed hop stands out; hops in front of it say they only pass its fault on. Server-rendered HTML
with no external assets, so it works in an air-gapped cluster; a few lines of inline script
re-fetch it every 15 s and swap the content in place, so it stays current without a reload.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import html
import time
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web

from layerwatch import __version__
from layerwatch.canary import CanaryResult
from layerwatch.chain import Chain
from layerwatch.metrics import Metrics
from layerwatch.signatures import signatures_json
from layerwatch.store import ResultStore, TargetStatus
from layerwatch.verdict import diagnosis_json

__all__ = ["RUNBOOKS", "WebServer", "runbook_url", "status_document"]

ChainSource = Callable[[], Mapping[str, Chain]]
RUNBOOKS = "https://github.com/layerwatch/layerwatch/blob/main/docs/runbooks.md"
_RUNBOOK_ALERTS = {
    "Unreachable": "LayerwatchArtifactUnreachable",
    "AuthFailed": "LayerwatchHopAuthFailed",
    "RateLimited": "LayerwatchHopRateLimited",
}
REFRESH_SECONDS = 15
_ORDER = {"unhealthy": 0, "unknown": 1, "waiting": 2, "healthy": 3}
"""Rows of a chain's table: broken first, then could not check, not checked yet, healthy."""
WAITING = "waiting for the first check"


def runbook_url(verdict: str) -> str | None:
    """The runbook section of the alert that pages for ``verdict`` (None for Healthy)."""
    if verdict == "Healthy":
        return None
    return f"{RUNBOOKS}#{_RUNBOOK_ALERTS.get(verdict, f'Layerwatch{verdict}').lower()}"


@functools.lru_cache(maxsize=8192)
def _iso(timestamp: float | None) -> str | None:
    """RFC 3339 in UTC to the second; cached, as the hops of one check share their times."""
    if timestamp is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


def _artifact(status: TargetStatus, chain: Chain | None) -> dict[str, Any]:
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
        path = chain.pull_path(target.reference) if chain is not None else []
        data.update(
            verdict="Unknown",
            health="unknown" if status.pending else "waiting",
            blame=None,
            message=status.pending or WAITING,
            notes=[],
            checkedAt=None,
            since=None,
            runbook=None,
            hops=[
                {
                    "name": hop.hop.name,
                    "repository": hop.repository,
                    "location": hop.location,
                    "verdict": None,
                    "health": "waiting",
                    "message": status.pending or WAITING,
                    "manifestDigest": None,
                    "since": None,
                    "runbook": None,
                }
                for hop in path
            ],
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
        since=_iso(status.since),
        runbook=runbook_url(judgement.verdict.value),
        hops=[
            {
                "name": verdict.hop,
                "repository": observation.repository,
                "location": observation.location,
                "verdict": verdict.verdict.value,
                "health": verdict.verdict.health.name.lower(),
                "message": verdict.message,
                "inheritedFrom": verdict.inherited_from,
                "diagnosis": diagnosis_json(verdict.diagnosis),
                "manifestDigest": observation.digest,
                "since": _iso(status.hop_since.get(verdict.hop)),
                "runbook": runbook_url(verdict.verdict.value),
                "signatures": signatures_json(observation.signatures),
            }
            for observation, verdict in zip(result.observations, judgement.hops, strict=True)
        ],
    )
    return data


def _canary(run: CanaryResult | None) -> dict[str, Any]:
    """A chain's cold-path canary as the API shows it (``health`` waiting before its first run)."""
    if run is None:
        empty: dict[str, Any] = dict.fromkeys(("reason", "message", "tag", "digest", "blame", "finishedAt"))
        return empty | {"health": "waiting"}
    blame = run.result.judgement.blame if run.result is not None else None
    return {
        "health": run.health.name.lower(),
        "reason": run.reason,
        "message": run.message,
        "tag": run.tag,
        "digest": run.digest,
        "blame": blame,
        "finishedAt": _iso(run.finished),
    }


_CANARY_RUNBOOKS = {
    "unhealthy": f"{RUNBOOKS}#layerwatchcoldpathbroken",
    "unknown": f"{RUNBOOKS}#layerwatchcanaryunknown",
}


def _canary_line(canary: Mapping[str, Any] | None) -> str:
    """One line under a chain's heading: what the last fresh artifact met on its way to the edge."""
    if canary is None:
        return ""
    health = canary["health"]
    if health == "waiting":
        return '<div class="canary waiting">cold path (canary): not run yet; it runs once per interval</div>'
    tag = f" · {html.escape(canary['tag'])}" if canary["tag"] else ""
    return (
        f'<div class="canary {health}">cold path (canary): <b>{html.escape(canary["reason"])}</b>'
        f" · {html.escape(canary['message'])}{tag} · at {html.escape(canary['finishedAt'])}"
        f"{_runbook(_CANARY_RUNBOOKS.get(health))}</div>"
    )


def status_document(
    store: ResultStore,
    chains: Mapping[str, Chain],
    hop_up: Mapping[tuple[str, str], bool],
    not_ready: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """``/api/v1/status``: every chain with its hops, every artifact with its per-hop verdicts.

    Artifacts are grouped by chain, broken ones first (then unknown, waiting, healthy).
    """
    canaries = store.canaries()
    artifacts = sorted(
        (_artifact(s, chains.get(s.chain)) for s in store.snapshot()),
        key=lambda a: (a["chain"], _ORDER[a["health"]], a["namespace"], a["name"]),
    )
    return {
        "version": __version__,
        "generatedAt": _iso(dt.datetime.now(dt.UTC).timestamp()),
        "summary": {
            "artifacts": len(artifacts),
            **{health: sum(1 for a in artifacts if a["health"] == health) for health in _ORDER},
        },
        "chains": [
            {
                "name": name,
                "interval": chain.interval,
                "mode": chain.mode.value,
                "hops": [
                    {"name": h.name, "url": h.url, "up": hop_up.get((name, h.name))} for h in chain.hops
                ],
                "canary": _canary(canaries.get(name)) if chain.canary is not None else None,
            }
            for name, chain in sorted(chains.items())
        ],
        "chainsNotReady": [{"name": n, "reason": r} for n, r in sorted((not_ready or {}).items())],
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
th .state{display:block;font-weight:600;font-size:13px;color:#1b1f24;margin-top:.2rem}
tr.unhealthy>th{border-left:5px solid #cf222e}
tr.unknown>th{border-left:5px solid #bf8700}
td{border-left-width:5px}
td.healthy{background:#dafbe1;border-left-color:#2da44e}
td.unhealthy{background:#ffebe9;border-left-color:#cf222e}
td.unknown{background:#fff8c5;border-left-color:#bf8700}
td.waiting,td.none{background:#f6f8fa;color:#57606a}
td.blamed{outline:3px solid #cf222e;outline-offset:-3px}
.diag{margin:.3rem 0}
td.unknown.blamed{outline-color:#bf8700}
td.passed{opacity:.72}
.verdict{font-weight:700;font-size:15px}
td.unhealthy .verdict{color:#a40e26}
td.unknown .verdict{color:#7d4e00}
.badge{display:inline-block;margin-left:.4rem;padding:0 .45rem;border-radius:1rem;vertical-align:2px;
 background:#cf222e;color:#fff;font-size:11px;font-weight:600}
td.unknown .badge{background:#9a6700}
.msg{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:12.5px;margin:.3rem 0;
 overflow-wrap:anywhere}
.when,.sigs{color:#57606a;font-size:12px}
.up{color:#1a7f37}
.down{color:#cf222e}
.pill{display:inline-block;padding:0 .55rem;border-radius:1rem;background:#eaeef2;margin-right:.4rem}
.pill.bad{background:#ffebe9;color:#a40e26}
.pill.warn{background:#fff8c5}
.pill.good{background:#dafbe1;color:#116329}
.notready{background:#fff8c5;border:1px solid #bf8700;padding:.5rem .75rem;margin:.5rem 0}
.legend{color:#57606a;font-size:12px;margin-top:.5rem}
.canary{padding:.35rem .75rem;margin:.25rem 0 .5rem;border-left:5px solid #d0d7de;background:#fff}
.canary.healthy{border-left-color:#2da44e}
.canary.unhealthy{border-left-color:#cf222e;background:#ffebe9}
.canary.unknown{border-left-color:#bf8700;background:#fff8c5}
"""

_REFRESH = (
    "<script>(function(){var s=+new URLSearchParams(location.search).get('refresh')||SECONDS,n=0;"
    "setInterval(function(){fetch(location.href,{cache:'no-store'}).then(function(r){"
    "return r.ok?r.text():null}).then(function(t){if(!t)return;"
    "var c=new DOMParser().parseFromString(t,'text/html').getElementById('content');"
    "if(c){document.getElementById('content').replaceWith(c);document.body.dataset.refreshes=++n}"
    "}).catch(function(){})},s*1000)})()</script>"
).replace("SECONDS", str(REFRESH_SECONDS))
"""Re-fetch the page and swap its content in place (``?refresh=N`` seconds; default 15)."""


@functools.lru_cache(maxsize=8192)
def _parse_iso(text: str) -> float:
    return dt.datetime.fromisoformat(text).timestamp()  # "...Z" is UTC (Python >= 3.11)


def _for(since: str | None, now: str) -> str:
    """``since 09:12:03Z (for 4m 10s)``: when a verdict began and how long it has held."""
    if since is None:
        return ""
    seconds = max(0, int(_parse_iso(now) - _parse_iso(since)))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    units = [(days, "d"), (hours, "h"), (minutes, "m"), (seconds, "s")]
    shown = [f"{n}{u}" for n, u in units if n][:2] or ["0s"]
    return f"since {since} (for {' '.join(shown)})"


def _runbook(url: str | None) -> str:
    return f' · <a class="runbook" href="{html.escape(url)}">runbook</a>' if url else ""


def _signatures_line(signatures: Mapping[str, Any] | None) -> str:
    """How many of the signatures a hop listed are intact (nothing when none were asked for)."""
    if signatures is None:
        return ""
    found = signatures["signatures"]
    intact = sum(1 for s in found if s["status"] == "ok")
    provider = html.escape(signatures["provider"])
    text = f"{intact} of {len(found)} {provider} signatures intact" if found else f"no {provider} signature"
    return f'<div class="sigs">{text}</div>'


def _diagnosis_line(diagnosis: Mapping[str, Any] | None) -> str:
    """The named cause first, then whether it heals and what to do: what an on-call reads first."""
    if diagnosis is None:
        return ""
    name = html.escape(diagnosis["name"])
    heals = "heals by itself" if diagnosis["heals"] else "never heals by itself"
    remedy = html.escape(diagnosis["remedy"])
    return f'<div class="diag" data-diagnosis="{name}"><b>{name}</b>: {heals}; {remedy}</div>'


def _cell(hop: Mapping[str, Any] | None, artifact: Mapping[str, Any], now: str) -> str:
    if hop is None:
        return '<td class="none">not on pull path</td>'
    health, name, blame = hop["health"], hop["name"], artifact["blame"]
    if health == "waiting":
        return f'<td class="waiting" data-hop="{html.escape(name)}">{html.escape(hop["message"])}</td>'
    blamed = health != "healthy" and name == blame
    passed: str | None = hop.get("inheritedFrom") if health != "healthy" and not blamed else None
    body = f'<div class="verdict">{html.escape(hop["verdict"])}'
    if blamed:
        body += '<span class="badge" title="the hop whose own answer explains the problem">blamed</span>'
    body += "</div>"
    if passed is not None:
        body += f'<div class="when">passes on the fault of hop {html.escape(passed)}</div>'
    body += _diagnosis_line(hop.get("diagnosis"))
    if health != "healthy":
        body += f'<div class="msg">{html.escape(hop["message"])}</div>'
    body += _signatures_line(hop.get("signatures"))
    body += f'<div class="when">{html.escape(_for(hop.get("since"), now))}</div>'
    body += (
        f'<div class="when">checked {html.escape(artifact["checkedAt"] or "-")}'
        f"{_runbook(hop.get('runbook'))}</div>"
    )
    classes = " ".join([health, *(["blamed"] if blamed else []), *(["passed"] if passed is not None else [])])
    attributes = (
        f'class="{classes}" data-hop="{html.escape(name)}" data-verdict="{html.escape(hop["verdict"])}"'
        + (' data-blamed="true"' if blamed else "")
    )
    return f"<td {attributes}>{body}</td>"


def _row_header(artifact: Mapping[str, Any], now: str) -> str:
    who = "/".join(p for p in (artifact["namespace"], artifact["name"]) if p)
    if artifact["checkedAt"] is None:
        state = html.escape(artifact["message"])
    else:
        where = f" at {artifact['blame']}" if artifact["blame"] else ""
        state = html.escape(f"{artifact['verdict']}{where} {_for(artifact['since'], now)}")
    return (
        f'<tr class="{artifact["health"]}" data-artifact="{html.escape(who)}" '
        f'data-health="{artifact["health"]}"><th>{html.escape(who)}'
        f"<small>{html.escape(artifact['reference'])}</small>"
        f'<span class="state">{state}</span>'
        + "".join(f'<small class="note">{html.escape(note)}</small>' for note in artifact.get("notes", ()))
        + "</th>"
    )


def status_page(document: Mapping[str, Any]) -> str:
    summary, now = document["summary"], document["generatedAt"]
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        '<meta name=viewport content="width=device-width,initial-scale=1">',
        f"<title>layerwatch</title><style>{_STYLE}</style></head><body><div id=content>",
        "<h1>layerwatch: artifacts through their proxy chains</h1>",
        f'<div class="sub">updated {html.escape(now)} (every {REFRESH_SECONDS}s) · '
        f"version {html.escape(document['version'])} · "
        f'<span class="pill">{summary["artifacts"]} artifacts</span>'
        f'<span class="pill bad">{summary["unhealthy"]} unhealthy</span>'
        f'<span class="pill warn">{summary["unknown"]} unknown</span>'
        f'<span class="pill">{summary["waiting"]} waiting</span>'
        f'<span class="pill good">{summary["healthy"]} healthy</span>'
        ' · <a href="api/v1/status">JSON</a> · <a href="metrics">metrics</a></div>',
    ]
    parts += [
        f'<div class="notready">chain {html.escape(c["name"])} is not ready, nothing on it is checked: '
        f"{html.escape(c['reason'])}{_runbook(f'{RUNBOOKS}#layerwatchchainnotready')}</div>"
        for c in document.get("chainsNotReady", ())
    ]
    for chain in document["chains"]:
        hops = chain["hops"]
        name = html.escape(chain["name"])
        parts.append(
            f'<h2 id="chain-{name}">chain {name}'
            f"<small>{len(hops)} hops, edge first · checked every {chain['interval']:g}s"
            f" · mode {html.escape(chain['mode'])}</small></h2>"
        )
        parts.append(_canary_line(chain.get("canary")))
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
            parts.append(_row_header(artifact, now))
            by_hop = {h["name"]: h for h in artifact["hops"]}
            parts += [_cell(by_hop.get(hop["name"]), artifact, now) for hop in hops]
            parts.append("</tr>")
        parts.append("</tbody></table>")
    if document["chains"]:
        parts.append(
            '<p class="legend">Each cell is the artifact as a client pulling through that hop gets it. '
            "Broken rows come first. <b>blamed</b> (outlined) marks the hop whose own answer explains "
            "the problem: hops in front of it that fail only because it does pass it on (faded), "
            'and a named diagnosis says whether it heals and what to do. "since" is the first check '
            "that gave the verdict. Times are UTC.</p>"
        )
    else:
        parts.append("<p>No chains configured yet.</p>")
    parts.append(f"</div>{_REFRESH}</body></html>")
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
        return status_document(
            self.metrics.store, self.chains(), self.metrics.hop_up(), self.metrics.chains_not_ready()
        )

    # Rendering grows with the number of targets (about 70 ms for /metrics at 1,000), so it runs in
    # a worker thread instead of pausing every check; the store and the metrics are lock-protected.

    async def _page(self, _: web.Request) -> web.Response:
        page = await asyncio.to_thread(lambda: status_page(self._document()))
        return web.Response(text=page, content_type="text/html")

    async def _status(self, _: web.Request) -> web.Response:
        return web.json_response(await asyncio.to_thread(self._document))

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        """Streamed a piece at a time: the whole exposition is never in memory at once."""
        response = web.StreamResponse(headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})
        await response.prepare(request)
        chunks = self.metrics.exposition_chunks()
        while (chunk := await asyncio.to_thread(next, chunks, b"")) != b"":
            await response.write(chunk)
        await response.write_eof()
        return response

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
