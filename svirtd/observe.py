"""What each resource of a guest carries on disk against what it should carry (Query, Verify's view).

Read-only file I/O (runs in a worker thread): every resource of the definition and every claim is
opened the safe way and its label read; the verdict per resource follows the label decision: svirtd's
own labels must be in place, libvirt's only while the guest runs, and what nobody labels is listed
with the reason.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterable, Mapping, Sequence

from . import labels
from .errors import UnsafePath
from .label_plan import LabelDecision
from .models import Applier, Resource, ResourceKind, ResourceState, ResourceStatus
from .path_policy import check_resource_path
from .store import Claim

NoteFor = Callable[[labels.LabelUnsupported], str]


def observe(decisions: Iterable[LabelDecision], claims: Sequence[Claim], running: bool,
            denied: Sequence[str], unlabelable_note: NoteFor,
            hung: Mapping[str, str] | None = None) -> list[ResourceState]:
    """Expected vs. on-disk label of every resource of the definition, and of every claim it no longer
    names (a probed backing layer, a file a restore could not finish). Files on storage that does not
    answer (hung: path -> why) are reported as such, never looked at."""
    by_path = {c.path: c for c in claims}
    hung = hung or {}
    out: list[ResourceState] = []
    decided = list(decisions)
    named = {d.path for d in decided}
    decided += [LabelDecision(Resource(path=c.path, device=c.device, kind=c.kind, rclass=c.rclass), c.expected,
                              c.applier) for c in claims if c.path not in named]
    for d in decided:
        if d.path in hung:
            out.append(ResourceState(path=d.path, device=d.resource.device, kind=d.resource.kind,
                                     rclass=d.resource.rclass, expected=d.target, actual="",
                                     status=ResourceStatus.NOT_RESPONDING, note=hung[d.path], applier=d.applier))
            continue
        out.append(_observe_one(d, by_path.get(d.path), running, denied, unlabelable_note))
    return out


def _observe_one(d: LabelDecision, claim: Claim | None, running: bool, denied: Sequence[str],
                 unlabelable_note: NoteFor) -> ResourceState:
    res = d.resource

    def state(actual: str, status: ResourceStatus, note: str) -> ResourceState:
        return ResourceState(path=res.path, device=res.device, kind=res.kind, rclass=res.rclass,
                             expected=d.target, actual=actual, status=status, note=note or res.note,
                             applier=d.applier)

    if d.applier is Applier.NOBODY:
        return state("", ResourceStatus.NOT_RELABELED, f"not relabeled: {d.reason}")
    if res.kind is ResourceKind.NONE or (res.kind is ResourceKind.CHAR and not res.path.startswith("/")):
        status = ResourceStatus.DEFERRED if not running else ResourceStatus.NOT_OBSERVED
        return state("", status, d.reason)
    if res.kind is ResourceKind.CHAR:
        return _observe_node(d, running, state)
    return _observe_file(d, claim, running, denied, unlabelable_note, state)


def _observe_file(d: LabelDecision, claim: Claim | None, running: bool, denied: Sequence[str],
                  unlabelable_note: NoteFor,
                  state: Callable[[str, ResourceStatus, str], ResourceState]) -> ResourceState:
    res = d.resource
    try:
        check_resource_path(res, denied)
        with labels.open_resource(res.path, res.kind) as opened:
            try:
                labels.check_labelable(opened)
                actual = labels.get_label(opened) or ""
            except labels.LabelUnsupported as exc:
                return state("", ResourceStatus.UNLABELABLE, unlabelable_note(exc))
    except FileNotFoundError:
        return state("", ResourceStatus.ABSENT, "not present yet" if res.optional else "missing")
    except (UnsafePath, OSError) as exc:
        return state("", ResourceStatus.NOT_RELABELED, f"refused: {exc}")
    if d.applier is Applier.LIBVIRT and not running:
        return state(actual, ResourceStatus.DEFERRED, d.reason)
    if claim is not None and claim.phase != "applied":
        return state(actual, ResourceStatus.PENDING, "")
    if actual == d.target:
        tree = "directory tree (label of its root shown)" if res.kind is ResourceKind.TREE else ""
        return state(actual, ResourceStatus.LABELED, tree)
    who = "libvirt's" if d.applier is Applier.LIBVIRT else "svirtd's"
    return state(actual, ResourceStatus.DRIFTED, f"on-disk label differs from {who}")


def _observe_node(d: LabelDecision, running: bool,
                  state: Callable[[str, ResourceStatus, str], ResourceState]) -> ResourceState:
    """A host device node libvirt labels: its label is read (never opened: opening a device has effects)."""
    try:
        actual = os.getxattr(d.path, labels.XATTR, follow_symlinks=False).rstrip(b"\0").decode()
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return state("", ResourceStatus.ABSENT, "the device node does not exist")
        actual = ""
    if not running:
        return state(actual, ResourceStatus.DEFERRED, d.reason)
    if actual == d.target:
        return state(actual, ResourceStatus.LABELED, "")
    return state(actual, ResourceStatus.DRIFTED, "on-disk label differs from libvirt's")
