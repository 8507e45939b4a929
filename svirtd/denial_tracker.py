"""Denials, attributed and explained: per-guest history, D-Bus signal, structured journal lines.

Bounded under a flood: a fixed-length history per guest, a bounded cache of explanations (one policy
question per distinct access, not per record), and journal lines rate-limited per guest with the
number of suppressed ones reported.
"""

from __future__ import annotations

import functools
import logging
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass

from . import message_ids
from .denials import Attribution, AvcRecord, Explanation, Lookup, attribute, explain
from .level_claims import pair_of
from .models import Assignment
from .policy_judge import PolicyJudge, Verdict

log = logging.getLogger(__name__)

HISTORY = 50  # denials kept per guest
LOG_BURST = 10  # journal lines per guest per second before suppressing
UNATTRIBUTED = ""  # the rate-limit key of denials that name no guest: one budget for all of them
SIGNAL_BURST = 50  # Denied signals per guest per second: a hammering guest must not flood the system bus


class RateLimit:
    """At most `burst` events per key per second; counts what it held back."""

    def __init__(self, burst: int) -> None:
        self.burst = burst
        self._windows: dict[str, tuple[float, int, int]] = {}  # key -> (window start, passed, held back)

    def allow(self, key: str, now: float) -> tuple[bool, int]:
        """(may pass, how many were held back since the last one that passed)."""
        start, passed, held = self._windows.get(key, (now, 0, 0))
        if now - start >= 1.0:
            start, passed = now, 0
        if passed >= self.burst:
            self._windows[key] = (start, passed, held + 1)
            return False, 0
        self._windows[key] = (start, passed + 1, 0)
        return True, held

    def forget(self, key: str) -> None:
        self._windows.pop(key, None)


@dataclass(frozen=True)
class DenialEvent:
    at: float
    attribution: Attribution
    explanation: Explanation
    suppressed: int = 0  # signals held back by the rate limit since the previous one

    @property
    def record(self) -> AvcRecord:
        return self.attribution.record


class DenialTracker:
    def __init__(self, lookup: Lookup, judge: PolicyJudge | None,
                 emit: Callable[[DenialEvent], None] | None = None) -> None:
        self._lookup = lookup
        self._judge = judge
        self.emit = emit
        self._history: defaultdict[str, deque[DenialEvent]] = defaultdict(lambda: deque(maxlen=HISTORY))
        self._log_limit = RateLimit(LOG_BURST)
        self._signal_limit = RateLimit(SIGNAL_BURST)
        self.attributed = 0
        self.unattributed = 0
        self.granted = 0

    def on_record(self, record: AvcRecord) -> None:
        if record.result != "denied":
            self.granted += 1
            return
        attribution = attribute(record, self._lookup)
        if not attribution.involves_guests:
            self.unattributed += 1
            self._log_unattributed(record)
            return
        self.attributed += 1
        verdict, booleans = self._verdict(record.scontext, record.tcontext, record.tclass, record.permissions)
        event = DenialEvent(at=time.time(), attribution=attribution,
                            explanation=explain(attribution, verdict, booleans))
        for uuid in {g.uuid for g in (attribution.source, attribution.target) if g is not None}:
            self._history[uuid].append(event)
        self._log(event, verdict)
        guest = attribution.source or attribution.target
        assert guest is not None  # involves_guests
        may, held = self._signal_limit.allow(guest.uuid, event.at)
        if may and self.emit is not None:
            self.emit(event if not held else DenialEvent(event.at, attribution, event.explanation, held))

    @functools.lru_cache(maxsize=1024)  # noqa: B019 - bounded; one tracker per daemon
    def _verdict(self, scontext: str, tcontext: str, tclass: str,
                 perms: tuple[str, ...]) -> tuple[str, tuple[str, ...]]:
        if self._judge is None or self._judge.policy_file is None:
            return "UNKNOWN", ()
        try:
            decision = self._judge.decide(scontext, tcontext, tclass, list(perms))
        except (OSError, ValueError, KeyError) as exc:
            log.debug("no verdict for %s -> %s: %s", scontext, tcontext, exc)
            return "UNKNOWN", ()
        booleans = decision.booleans if decision.verdict is Verdict.BOOLEAN else ()
        return decision.verdict.name, booleans

    def _log(self, event: DenialEvent, verdict: str) -> None:
        a = event.attribution
        guest = a.source or a.target
        assert guest is not None
        may, held = self._log_limit.allow(guest.uuid, event.at)
        if held:
            log.warning("%d denials of guest %s were not logged (rate limit); Query shows the latest", held,
                        guest.name, extra={"GUEST_UUID": guest.uuid, "GUEST_NAME": guest.name})
        if not may:
            return
        rec = a.record
        cross = a.source is not None and a.target is not None and a.source.uuid != a.target.uuid
        log.warning("denied: %s", event.explanation.text, extra={
            "MESSAGE_ID": message_ids.DENIAL_CROSS_GUEST if cross else message_ids.DENIAL_GUEST,
            "GUEST_UUID": guest.uuid, "GUEST_NAME": guest.name,
            "TARGET_GUEST_UUID": a.target.uuid if a.target else "",
            "TARGET_GUEST_NAME": a.target.name if a.target else "",
            # For the catalog's text: who was denied, and what (the other guest, or the host object).
            "SVIRT_SOURCE_GUEST": a.source.name if a.source else rec.scontext,
            "SVIRT_TARGET": a.target.name if a.target else rec.tcontext,
            "SVIRT_VERDICT": verdict,
            **avc_fields(rec)})

    def _log_unattributed(self, record: AvcRecord) -> None:
        """A denial whose contexts carry category pairs that no guest holds (a guest svirtd does not
        isolate, a file left with a released guest's pair). Denials without a pair are other
        programs' business: not logged."""
        if pair_of(record.scontext) is None and pair_of(record.tcontext) is None:
            return
        may, held = self._log_limit.allow(UNATTRIBUTED, time.time())
        if may:
            log.warning("denied: %s may not %s %s %s (%s); no guest holds these categories", record.scontext,
                        " ".join(record.permissions), record.tclass, record.path, record.tcontext,
                        extra=message_ids.message_fields(message_ids.DENIAL_UNATTRIBUTED, SVIRT_HELD_BACK=str(held),
                                                         **avc_fields(record)))

    # manager.Listener: a released guest's history goes with it.
    def isolated(self, assignment: Assignment) -> None:
        pass

    def released(self, uuid: str, name: str) -> None:
        self.forget(uuid)

    def history(self, uuid: str) -> list[DenialEvent]:
        return list(self._history.get(uuid, ()))

    def forget(self, uuid: str) -> None:
        self._history.pop(uuid, None)
        self._log_limit.forget(uuid)
        self._signal_limit.forget(uuid)


def avc_fields(rec: AvcRecord) -> dict[str, str]:
    """Journal fields of an AVC record."""
    return {"AVC_PERMISSIONS": " ".join(rec.permissions), "AVC_TCLASS": rec.tclass, "AVC_PATH": rec.path,
            "AVC_SCONTEXT": rec.scontext, "AVC_TCONTEXT": rec.tcontext}
