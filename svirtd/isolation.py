"""The proof of isolation (pure): judge every guest's process label against every resource label.

svirt's promise, checked against the compiled policy rather than assumed: for every ordered pair of
guests A != B, A's process is denied read/write/open/append on B's private images (by the MCS
constraint) and allowed on its own; shared (s0) images are readable and writable by every guest;
read-only content is readable and not writable. The decision function is injected (the policy judge
over libsepol in svirtd, anything in a unit test), so this module does no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from .models import ResourceClass

PRIVATE_PERMS = ("read", "write", "open", "append")


@dataclass(frozen=True)
class Subject:
    """A guest's qemu process label."""

    uuid: str
    name: str
    label: str


@dataclass(frozen=True)
class Object:
    """A resource label as found on disk, and the guest it belongs to."""

    owner_uuid: str
    owner_name: str
    path: str
    label: str
    rclass: ResourceClass


@dataclass(frozen=True)
class Violation:
    kind: str  # cross-guest | own-denied | shared-denied | readonly-writable | readonly-unreadable
    subject_uuid: str
    subject_name: str
    owner_uuid: str
    owner_name: str
    path: str
    label: str
    permission: str
    verdict: str

    @property
    def message(self) -> str:
        what = {
            "cross-guest": f"guest {self.subject_name} may {self.permission} guest {self.owner_name}'s private "
                           f"resource {self.path} ({self.label}): the two are NOT isolated",
            "own-denied": f"guest {self.subject_name} is denied {self.permission} on its own resource {self.path} "
                          f"({self.label}: {self.verdict})",
            "shared-denied": f"guest {self.subject_name} is denied {self.permission} on shared {self.path} "
                             f"({self.verdict})",
            "readonly-writable": f"guest {self.subject_name} may write read-only content {self.path}",
            "readonly-unreadable": f"guest {self.subject_name} cannot read content {self.path} ({self.verdict})",
        }
        return what.get(self.kind, self.kind)


# decide(scontext, tcontext, tclass, [perm]) -> (allowed, verdict name)
Decide = Callable[[str, str, str, list[str]], tuple[bool, str]]


@dataclass(frozen=True)
class Proof:
    subjects: int
    objects: int
    ordered_pairs: int
    checks: int
    violations: tuple[Violation, ...]

    @property
    def ok(self) -> bool:
        return not self.violations

    def involving(self, uuid: str) -> tuple[Violation, ...]:
        return tuple(v for v in self.violations if uuid in (v.subject_uuid, v.owner_uuid))


def prove_isolation(subjects: Sequence[Subject], objects: Iterable[Object], decide: Decide) -> Proof:
    objs = list(objects)
    violations: list[Violation] = []
    checks = 0

    def check(s: Subject, o: Object, perm: str, want_allowed: bool, kind: str) -> None:
        nonlocal checks
        checks += 1
        allowed, verdict = decide(s.label, o.label, "file", [perm])
        if allowed != want_allowed:
            violations.append(Violation(kind, s.uuid, s.name, o.owner_uuid, o.owner_name, o.path, o.label, perm,
                                        verdict))

    for s in subjects:
        for o in objs:
            if o.rclass is ResourceClass.PRIVATE:
                own = o.owner_uuid == s.uuid
                for perm in PRIVATE_PERMS:
                    check(s, o, perm, own, "own-denied" if own else "cross-guest")
            elif o.rclass is ResourceClass.SHARED:
                for perm in ("read", "write"):
                    check(s, o, perm, True, "shared-denied")
            elif o.rclass is ResourceClass.READONLY:
                check(s, o, "read", True, "readonly-unreadable")
                check(s, o, "write", False, "readonly-writable")
    owners = {o.owner_uuid for o in objs}
    pairs = sum(1 for s in subjects for owner in owners if owner != s.uuid)
    return Proof(subjects=len(subjects), objects=len(objs), ordered_pairs=pairs, checks=checks,
                 violations=tuple(violations))
