"""The invariants a soak checks after every restart: pure checks over facts collected from the outside
(the state database, libvirt's definitions, the labels on disk, the journal directory, svirtd's answers).

A fact names what it is about, so each violation can be reported, not only counted."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

IMAGE_TYPE = "svirt_image_t"


@dataclass(frozen=True)
class Row:
    """An assignment in svirtd's table."""

    uuid: str
    name: str
    level: str
    phase: str  # active | releasing


@dataclass(frozen=True)
class ClaimFact:
    uuid: str
    path: str
    kind: str  # disk, tree, ...
    dev: int
    ino: int


@dataclass(frozen=True)
class Definition:
    """A guest libvirt has (its live definition if it runs): the files it names, its seclabel's level."""

    uuid: str
    name: str
    files: frozenset[str]  # disk sources and every file under its <filesystem> trees
    seclabel_level: str | None = None


@dataclass(frozen=True)
class FileFact:
    """A file the soak made, with the label it was given then (its original) and the label it has now."""

    path: str
    original: str | None
    actual: str | None


@dataclass
class Facts:
    rows: list[Row]
    claims: list[ClaimFact]
    definitions: list[Definition]
    files: list[FileFact]
    journals: list[str]  # file names in svirtd's journal directory
    reasons: dict[str, str] = field(default_factory=dict)  # uuid -> why a defined guest is not isolated


@dataclass
class Report:
    duplicate_pairs: list[str] = field(default_factory=list)
    lost_originals: list[str] = field(default_factory=list)
    mislabeled: list[str] = field(default_factory=list)
    unconfined_without_reason: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {k: len(v) for k, v in vars(self).items()}

    @property
    def clean(self) -> bool:
        return not any(vars(self).values())


def level_of(label: str | None) -> str | None:
    """s0:cA,cB of an image label svirtd gives (user:role:svirt_image_t:level), None for any other label."""
    if label is None:
        return None
    parts = label.split(":", 3)
    return parts[3] if len(parts) == 4 and parts[2] == IMAGE_TYPE else None


def check(facts: Facts) -> Report:
    report = Report()
    _pairs(facts, report)
    _files(facts, report)
    _confinement(facts, report)
    _orphans(facts, report)
    return report


def _pairs(facts: Facts, report: Report) -> None:
    """No pair held by two guests: in the table, in the definitions, on disk; and the three agree."""
    held = Counter(r.level for r in facts.rows)
    report.duplicate_pairs += [f"table: {lv} held by {n} guests" for lv, n in held.items() if n > 1]
    level_of_guest = {r.uuid: r.level for r in facts.rows}
    by_seclabel: dict[str, set[str]] = {}
    for d in facts.definitions:
        if d.seclabel_level is None:
            continue
        by_seclabel.setdefault(d.seclabel_level, set()).add(d.uuid)
        mine = level_of_guest.get(d.uuid)
        if mine is not None and mine != d.seclabel_level:
            report.duplicate_pairs.append(f"definition of {d.name} says {d.seclabel_level}, the table {mine}")
    report.duplicate_pairs += [f"definitions: {lv} in {sorted(us)}" for lv, us in by_seclabel.items() if len(us) > 1]
    owner_of_level = {r.level: r.uuid for r in facts.rows}
    owner_of_file = _file_owners(facts.definitions)
    for f in facts.files:
        on_disk = level_of(f.actual)
        holder = owner_of_level.get(on_disk) if on_disk else None
        owners = owner_of_file.get(f.path, set())
        if holder is not None and holder not in owners:
            report.duplicate_pairs.append(f"{f.path} carries {on_disk} of guest {holder}, which does not use it")


def _file_owners(definitions: list[Definition]) -> dict[str, set[str]]:
    owners: dict[str, set[str]] = {}
    for d in definitions:
        for path in d.files:
            owners.setdefault(path, set()).add(d.uuid)
    return owners


def _files(facts: Facts, report: Report) -> None:
    """A file no isolated guest uses carries its original label; one that an isolated guest uses, its pair."""
    active = {r.uuid: r.level for r in facts.rows if r.phase == "active"}
    owners = _file_owners(facts.definitions)
    for f in facts.files:
        isolated = [active[u] for u in owners.get(f.path, ()) if u in active]
        if not isolated:
            if f.actual != f.original:
                report.lost_originals.append(f"{f.path}: {f.actual!r}, its original was {f.original!r}")
        elif len(isolated) == 1 and level_of(f.actual) != isolated[0]:
            report.mislabeled.append(f"{f.path}: {f.actual!r}, its guest holds {isolated[0]}")


def _confinement(facts: Facts, report: Report) -> None:
    """Every defined guest is isolated, or svirtd says why not."""
    isolated = {r.uuid for r in facts.rows if r.phase == "active"}
    for d in facts.definitions:
        if d.uuid not in isolated and not facts.reasons.get(d.uuid):
            report.unconfined_without_reason.append(f"{d.name} ({d.uuid})")


def _orphans(facts: Facts, report: Report) -> None:
    """No row, claim or journal without an owner: a row for a guest libvirt no longer has, a release
    left half-done, a claim of no row, a journal of no tree claim."""
    defined = {d.uuid for d in facts.definitions}
    rows = {r.uuid for r in facts.rows}
    report.orphans += [f"row {r.name} ({r.uuid}): no such guest in libvirt" for r in facts.rows
                       if r.uuid not in defined]
    report.orphans += [f"row {r.name} ({r.uuid}): release left half-done" for r in facts.rows if r.phase != "active"]
    report.orphans += [f"claim {c.path} of {c.uuid}: no such row" for c in facts.claims if c.uuid not in rows]
    trees = {(c.uuid, c.dev, c.ino) for c in facts.claims if c.kind == "tree"}
    shared = {(dev, ino) for _u, dev, ino in trees}
    for name in facts.journals:
        owner = journal_owner(name)
        if owner is None:
            report.orphans.append(f"journal {name}: not a journal name svirtd writes")
        elif (owner not in trees) if owner[0] != "shared" else ((owner[1], owner[2]) not in shared):
            report.orphans.append(f"journal {name}: no tree claim owns it")


def journal_owner(name: str) -> tuple[str, int, int] | None:
    """(uuid or 'shared', dev, ino) of a journal file `OWNER-DEV-INO.RUN.WORKER` (relabel.journal_prefix)."""
    prefix = name.split(".", 1)[0]
    parts = prefix.rsplit("-", 2)
    if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
        return None
    return parts[0], int(parts[1]), int(parts[2])
