"""Relabel planning (pure) and its application (through labels.py), with rollback.

A relabel is a small transaction: plan every resource's target label (pure, refuses hostile paths
before anything is opened) -> probe (open each resource safely, read identity and current label) ->
the manager records the claims with their originals in the store -> apply in sorted path order ->
on any failure restore what was already changed, in reverse order.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from . import labels
from .errors import RelabelFailed, UnsafePath
from .models import Level, Resource, ResourceClass, ResourceKind
from .path_policy import check_resource_path
from .policy import LabelSpec
from .resources import DomainSpec
from .store import Claim

log = logging.getLogger(__name__)


# -- planning (pure) ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedResource:
    resource: Resource
    target: str  # the context the resource must carry


@dataclass(frozen=True)
class RelabelPlan:
    uuid: str
    level: Level
    items: tuple[PlannedResource, ...]  # sorted by path: the lock and apply order
    unhandled: tuple[Resource, ...]


def plan_relabel(
    domain: DomainSpec, level: Level, spec: LabelSpec, denied_trees: Sequence[str] = ()
) -> RelabelPlan:
    """Every resource's target label; UnsafePath for the first path that may never be touched."""
    items: list[PlannedResource] = []
    unhandled: list[Resource] = []
    for res in domain.resources:
        if res.rclass is ResourceClass.UNHANDLED:
            unhandled.append(res)
            continue
        if res.kind is ResourceKind.TREE:
            # Directory trees (virtiofs/9p shares, TPM state) come with the relabeling engine's tree walker.
            unhandled.append(res.model_copy(update={
                "rclass": ResourceClass.UNHANDLED,
                "note": "directory trees are not relabeled by this svirtd version",
            }))
            continue
        check_resource_path(res, denied_trees)
        target = spec.label_for(res.rclass, level)
        assert target is not None
        items.append(PlannedResource(resource=res, target=str(target)))
    items.sort(key=lambda p: p.resource.path)
    return RelabelPlan(uuid=domain.uuid, level=level, items=tuple(items), unhandled=tuple(unhandled))


# -- probing and applying (I/O through labels.py) -------------------------------------------------


@dataclass
class Probed:
    """A planned resource opened and inspected: what it is on disk right now."""

    planned: PlannedResource
    opened: labels.Opened | None  # None: absent
    current: str | None = None
    unlabelable: labels.LabelUnsupported | None = None

    @property
    def path(self) -> str:
        return self.planned.resource.path

    def close(self) -> None:
        if self.opened is not None:
            self.opened.close()


@dataclass
class ProbeResult:
    present: list[Probed] = field(default_factory=list)
    absent: list[PlannedResource] = field(default_factory=list)
    unlabelable: list[Probed] = field(default_factory=list)

    def close(self) -> None:
        for p in (*self.present, *self.unlabelable):
            p.close()


def probe(plan: RelabelPlan, denied_trees: Sequence[str] = ()) -> ProbeResult:
    """Open every planned resource. UnsafePath (everything closed) if any is refused."""
    result = ProbeResult()
    try:
        for item in plan.items:
            try:
                opened = labels.open_resource(item.resource.path, item.resource.kind)
            except FileNotFoundError:
                result.absent.append(item)
                continue
            probed = Probed(planned=item, opened=opened)
            if opened.path != item.resource.path:
                # A symlinked parent or a /dev/disk link: judge the place it really lives in.
                check_resource_path(item.resource.model_copy(update={"path": opened.path}), denied_trees)
            try:
                labels.check_labelable(opened)
                probed.current = labels.get_label(opened)
            except labels.LabelUnsupported as exc:
                probed.unlabelable = exc
                result.unlabelable.append(probed)
                continue
            result.present.append(probed)
    except BaseException:
        result.close()
        raise
    return result


def apply_probed(items: Sequence[Probed]) -> None:
    """Write every target label; on failure roll back in reverse order and raise RelabelFailed."""
    done: list[Probed] = []
    for item in items:
        assert item.opened is not None
        if item.current == item.planned.target:
            continue
        try:
            labels.set_label(item.opened, item.planned.target)
        except (OSError, labels.LabelUnsupported) as exc:
            _rollback(done)
            raise RelabelFailed(f"relabeling {item.path} failed ({exc}); every change was rolled back") from exc
        done.append(item)


def _rollback(done: list[Probed]) -> None:
    for item in reversed(done):
        assert item.opened is not None
        try:
            if item.current is None:
                labels.remove_label(item.opened)
            else:
                labels.set_label(item.opened, item.current)
        except (OSError, labels.LabelUnsupported) as exc:  # keep going: restore as much as we can
            log.error("rollback of %s failed: %s", item.path, exc)


def current_labels(resources: Iterable[Resource]) -> list[str]:
    """Labels the given resources carry now (read-only; unreadable or refused ones are skipped)."""
    found: list[str] = []
    for res in resources:
        try:
            check_resource_path(res)
            with labels.open_resource(res.path, res.kind) as opened:
                label = labels.get_label(opened)
        except (OSError, UnsafePath, labels.LabelUnsupported):
            continue
        if label:
            found.append(label)
    return found


# -- restoring ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RestoreOutcome:
    path: str
    restored: bool
    message: str


class DefaultLabelLookup(Protocol):
    """The policy's default label for a path (selabel_lookup), None when it has none."""

    def lookup(self, path: str, mode: int) -> str | None: ...


def restore_claims(claims: Iterable[Claim], defaults: DefaultLabelLookup | None = None) -> list[RestoreOutcome]:
    """Put back what each claimed resource carried before svirtd touched it.

    A file that was replaced since (other inode) or relabeled by somebody else is left alone,
    with a warning: restoring over someone else's change would be a second surprise.
    """
    outcomes: list[RestoreOutcome] = []
    for claim in sorted(claims, key=lambda c: c.path, reverse=True):
        outcomes.append(_restore_one(claim, defaults))
    return outcomes


def _restore_one(claim: Claim, defaults: DefaultLabelLookup | None) -> RestoreOutcome:
    try:
        opened = labels.open_resource(claim.path, claim.kind)
    except FileNotFoundError:
        return RestoreOutcome(claim.path, False, "gone: nothing to restore")
    except UnsafePath as exc:
        return RestoreOutcome(claim.path, False, f"left alone: {exc}")
    with opened:
        if (opened.st.st_dev, opened.st.st_ino) != (claim.dev, claim.ino):
            return RestoreOutcome(claim.path, False, "left alone: the file was replaced since it was labeled")
        try:
            current = labels.get_label(opened)
            if current != claim.expected:
                return RestoreOutcome(claim.path, False,
                                      f"left alone: its label changed since ({current}), not svirtd's")
            # "" = the file had no label; None = unknown, so fall back to the policy default.
            original = claim.original
            if original is None and defaults is not None:
                original = defaults.lookup(opened.path, opened.st.st_mode)
            if original is None:
                return RestoreOutcome(claim.path, False, "left labeled: original and policy default unknown")
            if original == "":
                labels.remove_label(opened)
            else:
                labels.set_label(opened, original)
        except (OSError, labels.LabelUnsupported) as exc:
            return RestoreOutcome(claim.path, False, f"restore failed: {exc}")
    return RestoreOutcome(claim.path, True, f"restored to {original or '(no label)'}")

