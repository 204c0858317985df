"""The ``layerwatch.io/ProxyHealthy`` condition and its transition events (pure).

Flux owns its own condition types on the same list; layerwatch edits only its one entry and
keeps everything else byte-for-byte. ``lastTransitionTime`` moves only when ``status`` moves, so
an unchanged verdict produces an identical list and no write at all.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from layerwatch.verdict import Health, Judgement

__all__ = ["CONDITION_TYPE", "Transition", "desired_condition", "merge_conditions", "transition"]

CONDITION_TYPE = "layerwatch.io/ProxyHealthy"
_STATUS = {Health.HEALTHY: "True", Health.UNHEALTHY: "False", Health.UNKNOWN: "Unknown"}
_MAX_MESSAGE = 1024


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def desired_condition(
    judgement: Judgement | None,
    generation: int,
    *,
    pending: str | None = None,
    pending_reason: str = "Pending",
) -> dict[str, Any]:
    """The condition for a result (or Unknown with ``pending_reason`` when there is none).

    Without a timestamp: ``merge_conditions`` adds it.
    """
    if judgement is None:
        status, reason, message = "Unknown", pending_reason, pending or "not checked yet"
    else:
        status, reason = _STATUS[judgement.health], judgement.verdict.value
        message = judgement.message
        if judgement.notes:
            message = f"{message}; {'; '.join(judgement.notes)}"
    message = " ".join(message.split())[:_MAX_MESSAGE]
    return {
        "type": CONDITION_TYPE,
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
    }


def _current(conditions: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    return next((c for c in conditions if c.get("type") == CONDITION_TYPE), None)


def merge_conditions(
    conditions: Sequence[Mapping[str, Any]], desired: Mapping[str, Any], now: str
) -> list[dict[str, Any]] | None:
    """The full list with layerwatch's entry replaced, or None when nothing would change."""
    current = _current(conditions)
    entry = dict(desired)
    if (
        current is not None
        and current.get("status") == desired["status"]
        and current.get("lastTransitionTime")
    ):
        entry["lastTransitionTime"] = current["lastTransitionTime"]
    else:
        entry["lastTransitionTime"] = now
    if current is not None and all(current.get(k) == v for k, v in entry.items()):
        return None
    merged = [dict(c) for c in conditions if c.get("type") != CONDITION_TYPE]
    merged.append(entry)
    return merged


@dataclasses.dataclass(frozen=True)
class Transition:
    """An event to post: type (Normal/Warning), reason, message, and a name stable per transition."""

    type: str
    reason: str
    message: str
    name: str


def transition(
    namespace: str,
    name: str,
    uid: str,
    conditions: Sequence[Mapping[str, Any]],
    desired: Mapping[str, Any],
    *,
    warned: bool = False,
) -> Transition | None:
    """The event a change from the current condition to ``desired`` deserves, if any.

    Turning unhealthy (or changing unhealthy reason) is a Warning with the verdict as reason;
    turning healthy is ``ProxyRecovered`` when the condition was False, or when a Warning was
    posted (``warned``) and only unknown spells came since (False, Unknown, True: whoever saw
    the Warning also needs the all-clear). The event name derives from the object
    and the condition being replaced, so a restart that redoes the same transition creates the
    same name and the apiserver refuses the duplicate.
    """
    current = _current(conditions) or {}
    before = (current.get("status"), current.get("reason"))
    after = (desired["status"], desired["reason"])
    if before == after:
        return None
    if desired["status"] == "False":
        kind, reason = "Warning", str(desired["reason"])
    elif desired["status"] == "True" and (before[0] == "False" or warned):
        kind, reason = "Normal", "ProxyRecovered"
    else:
        return None
    seed = (
        f"{uid}|{current.get('status')}|{current.get('reason')}|{current.get('lastTransitionTime')}|{after}"
    )
    suffix = hashlib.sha256(seed.encode()).hexdigest()[:16]
    return Transition(kind, reason, str(desired["message"]), f"{name[:200]}.layerwatch.{suffix}")
