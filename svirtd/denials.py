"""Denials attributed to guests and explained in plain words (pure).

svirtd owns the level -> guest table, so an MCS denial that setroubleshoot files under its generic
catch-all becomes "guest web01 tried to read guest db02's disk: blocked by MCS isolation, expected".
Parsing of raw audit records happens at the edge (audit_watch, with auparse); this module gets the
fields, the table lookup and the policy's verdict injected.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass

from .level_claims import pair_of
from .models import Context, Level

_PERMS = re.compile(r"avc:\s+(denied|granted)\s+\{([^}]*)\}")


class MalformedRecord(ValueError):
    """An audit record that is not a complete AVC (truncated, garbled, missing contexts)."""


@dataclass(frozen=True)
class AvcRecord:
    kind: str  # AVC (kernel) or USER_AVC (userspace object managers)
    result: str  # denied | granted
    permissions: tuple[str, ...]
    scontext: str
    tcontext: str
    tclass: str
    path: str  # path= or name=, "" when the record has neither
    comm: str
    raw: str


def avc_from_fields(kind: str, text: str, fields: dict[str, str]) -> AvcRecord:
    """Build a record from auparse's fields plus the raw text (auparse does not return the { perms })."""
    m = _PERMS.search(text)
    scontext, tcontext, tclass = fields.get("scontext"), fields.get("tcontext"), fields.get("tclass")
    if m is None or not scontext or not tcontext or not tclass:
        raise MalformedRecord("not a complete AVC record")
    for ctx in (scontext, tcontext):
        if not _valid_context(ctx):
            raise MalformedRecord(f"bad context {ctx!r}")
    perms = tuple(p for p in m.group(2).split() if p)
    if not perms:
        raise MalformedRecord("no permissions in AVC record")
    path = fields.get("path") or fields.get("name") or ""
    return AvcRecord(kind=kind, result=m.group(1), permissions=perms, scontext=scontext, tcontext=tcontext,
                     tclass=tclass, path=path.strip('"'), comm=fields.get("comm", "").strip('"'), raw=text)


@functools.lru_cache(maxsize=4096)  # contexts repeat record after record
def _valid_context(text: str) -> bool:
    try:
        Context.parse(text)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class GuestRef:
    uuid: str
    name: str


Lookup = Callable[[Level], GuestRef | None]


@dataclass(frozen=True)
class Attribution:
    record: AvcRecord
    source: GuestRef | None  # the guest whose process was denied
    target: GuestRef | None  # the guest owning the object, None for a host object

    @property
    def involves_guests(self) -> bool:
        return self.source is not None or self.target is not None


def attribute(record: AvcRecord, lookup: Lookup) -> Attribution:
    """Which guests a denial is about, by the levels of its two contexts."""
    source_level, target_level = pair_of(record.scontext), pair_of(record.tcontext)
    source = lookup(source_level) if source_level is not None else None
    target = lookup(target_level) if target_level is not None else None
    return Attribution(record=record, source=source, target=target)


@dataclass(frozen=True)
class Explanation:
    text: str
    command: str = ""  # what would change it, where something would


def explain(a: Attribution, verdict: str, booleans: tuple[str, ...]) -> Explanation:
    """Plain words for a denial, from the policy's verdict (audit2why) on the same access."""
    rec = a.record
    perms = " ".join(rec.permissions)
    who = f"guest {a.source.name}" if a.source else f"process {Context.parse(rec.scontext).type}"
    what = (f"guest {a.target.name}'s {rec.tclass} {rec.path}".rstrip() if a.target
            else f"host {rec.tclass} {rec.path} ({Context.parse(rec.tcontext).type})".replace("  ", " "))
    if verdict == "CONSTRAINT":
        if a.source and a.target and a.source.uuid != a.target.uuid:
            return Explanation(f"blocked by MCS isolation between guest {a.source.name} and guest {a.target.name}"
                               f" -- expected: {a.source.name} tried to {perms} {what}")
        return Explanation(f"blocked by an MCS constraint: {who} may not {perms} {what} (its categories do not "
                           "dominate the object's)")
    if verdict == "BOOLEAN" and booleans:
        cmds = " ; ".join(f"setsebool -P {b} 1" for b in booleans)
        return Explanation(f"{who} may not {perms} {what} while boolean {' or '.join(booleans)} is off",
                           command=cmds)
    if verdict in ("TERULE", "DONTAUDIT"):
        return Explanation(f"type enforcement: the policy has no rule letting {Context.parse(rec.scontext).type} "
                           f"{perms} {Context.parse(rec.tcontext).type} {rec.tclass} objects ({who}, {what})")
    if verdict == "RBAC":
        return Explanation(f"role-based access control refuses {who} access to {what}")
    if verdict == "ALLOW":
        return Explanation(f"the loaded policy allows this now: it changed since the denial ({who}, {what})")
    return Explanation(f"{who} was denied {perms} on {what} ({verdict.lower()})")
