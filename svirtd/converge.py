"""One guest's relabel transaction against the claims table: the labels label_plan decided, written
(or, for what libvirt's driver labels, only claimed) with everything recorded before anything changes.

plan (label_plan + relabel.plan_relabel, pure) -> lock the paths and inodes (sorted; retried when a
file was swapped between the guess and the probe) -> probe (open, identity, current label) ->
refuse conflicts with other guests' claims (one owner per private file, no tree holding another
guest's file) -> record the claims with their originals -> apply -> mark applied; claims the guest no
longer names are restored. Always called with the guest's lock held (manager.py), never around a
libvirt call.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from . import labels, relabel
from .config import Config
from .errors import RelabelFailed, ResourceConflict, Unlabelable
from .label_plan import LabelDecision, decide_labels
from .logsetup import guest_fields
from .models import Applier, Assignment, ResourceClass, ResourceKind
from .path_locks import KeyLocks, inode_key, path_key
from .path_policy import Nesting
from .policy import LabelSpec
from .policy_judge import PolicyJudge
from .resources import DomainSpec
from .storage_gate import StorageGate
from .store import Claim, Store
from .to_the_end import to_the_end

T = TypeVar("T")
log = logging.getLogger(__name__)

# A relabel transaction re-locks when a file is swapped between its lock guess and its probe; a
# file swapped on every attempt is an attack or a runaway script: give up, having changed nothing.
LOCK_ATTEMPTS = 5


class Converger:
    def __init__(self, config: Config, store: Store, spec: LabelSpec, judge: PolicyJudge | None,
                 defaults: relabel.DefaultLabelLookup | None, storage: StorageGate) -> None:
        self.config = config
        self.storage = storage
        self.store = store
        self.spec = spec
        self.judge = judge
        self.defaults = defaults
        # Relabel transactions lock the paths and inodes they touch (sorted: no deadlock), so guests
        # that share nothing relabel in parallel. Always taken inside a guest lock, never around one.
        self.locks = KeyLocks()

    @property
    def denied(self) -> tuple[str, ...]:
        """Trees never relabeled: the configured ones (a reload may change them) and svirtd's state."""
        return (*self.config.denied_paths, str(self.config.state_dir))

    def decisions(self, domain: DomainSpec, a: Assignment, libvirt_relabels: bool) -> tuple[LabelDecision, ...]:
        own_private = frozenset(c.path for c in self.store.claims_for(a.uuid) if c.rclass is ResourceClass.PRIVATE)
        group = self.config.group_of(a.uuid, a.name)
        return decide_labels(domain, a.level, self.spec, libvirt_relabels, own_private,
                             group.category if group is not None else None)

    async def converge(self, domain: DomainSpec, a: Assignment, libvirt_relabels: bool) -> None:
        """Make the guest's resources carry the labels its level asks for; undo removed ones."""
        plan = relabel.plan_relabel(self.decisions(domain, a, libvirt_relabels), a.uuid, a.level,
                                    self.denied)  # UnsafePath: nothing touched
        for res, why in plan.refused:
            log.warning("%s: %s (%s) is not labeled: %s", domain.name, res.path, res.device, why,
                        extra=guest_fields(a.uuid, a.name))
        paths = [p.resource.path for p in plan.items]
        await self.storage.ensure(paths, domain.name)
        if any(p.labels and p.resource.probe_format == "qcow2" for p in plan.items):
            plan = await self.storage.read(paths, domain.name, relabel.with_backing_chains, plan, self.spec,
                                           self.denied)
            paths = [p.resource.path for p in plan.items]
            await self.storage.ensure(paths, domain.name)
        held = self.store.claims_for(a.uuid)  # stable: only this guest's transactions (guest lock held) change them
        if not plan.items and not held:
            return  # nothing to lock, probe, label or restore: no thread hop (a burst of diskless defines)
        for _attempt in range(LOCK_ATTEMPTS):
            keys = await self.storage.read(paths, domain.name, relabel.lock_keys, plan, held)
            async with self.locks.hold(keys):
                probed = await self.storage.read(paths, domain.name, relabel.probe, plan, self.denied)
                try:
                    if not relabel.probed_keys(probed) <= keys:
                        continue  # a file was replaced between the guess and the probe: lock what is there now
                    await self._apply(domain, a, probed)
                    return
                finally:
                    probed.close()
        raise RelabelFailed(f"{domain.name}: its files kept being replaced while svirtd labeled them "
                            f"({LOCK_ATTEMPTS} attempts); nothing was changed. Try again when they are stable")

    async def restore_all(self, a: Assignment) -> list[relabel.RestoreOutcome]:
        """Restore every claim of the guest (its release), under its resources' locks."""
        claims = self.store.claims_for(a.uuid)
        keys = {path_key(c.path) for c in claims} | {inode_key(c.dev, c.ino) for c in claims}
        async with self.locks.hold(keys):
            return await self.restore(a.uuid, claims)

    def unlabelable_note(self, a: Assignment, exc: labels.LabelUnsupported) -> str:
        """What the admin needs to know: isolation is lost, and which boolean (asked of the policy)
        would let guests use such storage at all."""
        if exc.sandboxed:
            return (f"{exc.path} is read-only for svirtd although its filesystem is writable: svirtd's unit "
                    f"does not list it in ReadWritePaths=. `systemctl edit svirtd` and add [Service] "
                    f"ReadWritePaths=-{exc.mount_point}, then `systemctl restart svirtd`; until then isolation "
                    "of this file is lost")
        booleans: tuple[str, ...] | None = None
        if self.judge is not None:
            booleans = self.judge.booleans_for_storage(str(self.spec.process_label(a.level)), exc.fstype)
        if booleans is None:
            booleans = (exc.boolean,) if exc.boolean else ()
        if booleans:
            how = " or ".join(f"`setsebool -P {b} 1`" for b in booleans)
            hint = f"guests reach it only after {how}, and then EVERY guest can reach it"
        else:
            hint = "no SELinux boolean lets guests use it: move it to a filesystem with xattr support"
        return f"{exc.path} is unlabelable ({exc.fstype}): isolation lost; {hint}"

    # -- the transaction --------------------------------------------------------------------------

    async def _report_unlabelable(self, domain: DomainSpec, a: Assignment, items: Sequence[relabel.Probed]) -> None:
        # In a worker thread: the first question reads the policy with setools (~0.2 s).
        described = await asyncio.to_thread(lambda: "; ".join(
            self.unlabelable_note(a, p.unlabelable) for p in items if p.unlabelable is not None))
        if self.config.refuse_unlabelable:
            raise Unlabelable(f"{domain.name}: {described}. refuse_unlabelable = true in svirtd.conf: move "
                              "these to labelable storage, or set it to false to isolate the rest")
        log.warning("%s: %s", domain.name, described, extra=guest_fields(a.uuid, a.name))

    def _check_nesting(self, a: Assignment, present: Sequence[relabel.Probed]) -> None:
        """ResourceConflict if a resource and another guest's directory tree overlap. Synchronous, and
        followed by this guest's claims without an await: no claim can appear in between."""
        if not present:
            return
        # Every other claim if this guest has a tree (it may hold any of them), else only their trees.
        has_tree = any(p.planned.resource.kind is ResourceKind.TREE for p in present)
        clash = relabel.find_nesting(present, self.store.claims_of_others(a.uuid, trees_only=not has_tree))
        if clash is None:
            return
        item, other, how = clash
        owner = self.store.get(other.uuid)
        whose = f"guest {owner.name if owner else other.uuid} ({other.uuid})"
        what = f"{item.path} ({item.planned.resource.device})"
        if how is Nesting.INSIDE:
            raise ResourceConflict(
                f"{what} lies inside {other.path}, a directory tree of {whose}: one file cannot carry two guests' "
                "labels; move it out of that tree, or give that guest a directory holding no other guest's files")
        raise ResourceConflict(
            f"the directory tree {what} contains {other.path}, a resource of {whose}: labeling the tree would hand "
            "that file to this guest; share a directory that holds no other guest's files")

    async def _apply(self, domain: DomainSpec, a: Assignment, probed: relabel.ProbeResult) -> None:
        if probed.unlabelable:
            await self._report_unlabelable(domain, a, probed.unlabelable)
        self._check_nesting(a, probed.present)
        existing = {c.path: c for c in self.store.claims_for(a.uuid)}
        # A file svirtd labeled that libvirt's driver labels from now on (the definition now lets it):
        # svirtd puts its original back first; libvirt remembers that one when the guest starts.
        handed_over = [existing[p.path] for p in probed.present if p.path in existing
                       and existing[p.path].applier is Applier.SVIRTD and not p.planned.labels]
        if handed_over:
            await self.restore(a.uuid, handed_over)
            for c in handed_over:
                existing.pop(c.path)
            given_back = {c.path for c in handed_over}
            for item in probed.present:
                if item.path in given_back and item.opened is not None:
                    item.current = labels.get_label(item.opened)
        claims: list[Claim] = []
        for item in probed.present:
            assert item.opened is not None
            st = item.opened.st
            sharers = self.store.claims_on_inode(st.st_dev, st.st_ino)
            self._check_conflicts(a, item, sharers)
            mine = existing.get(item.path)
            if not item.planned.labels:
                original = None  # libvirt remembers it (trusted.libvirt.security.*)
            elif mine is not None and (mine.dev, mine.ino) == (st.st_dev, st.st_ino) \
                    and mine.applier is Applier.SVIRTD:
                original = mine.original
            else:
                original = _original_of(sharers, item.current)
            claims.append(Claim(uuid=a.uuid, path=item.path, device=item.planned.resource.device,
                                kind=item.planned.resource.kind, rclass=item.planned.resource.rclass,
                                dev=st.st_dev, ino=st.st_ino, expected=item.planned.target,
                                original=original, phase="applying", real=item.opened.path,
                                applier=item.planned.applier))

        def done_already(item: relabel.Probed) -> bool:
            assert item.opened is not None
            mine = existing.get(item.path)
            return (mine is not None and mine.phase == "applied" and mine.applier is item.planned.applier
                    and (not item.planned.labels or item.current == item.planned.target)
                    and (mine.dev, mine.ino) == (item.opened.st.st_dev, item.opened.st.st_ino))

        def journal_for(item: relabel.Probed) -> Path:
            assert item.opened is not None
            return relabel.journal_prefix(self.config.journal_dir, a.uuid, item.planned.resource.rclass,
                                          item.opened.st.st_dev, item.opened.st.st_ino)

        # Claims already on record and on disk need no write: a guest start (the hook) that finds
        # everything in place costs no fsync.
        changing = [c for c, item in zip(claims, probed.present, strict=True)
                    if not (done_already(item) and existing[c.path] == c.model_copy(update={"phase": "applied"}))]
        refused: list[relabel.Probed] = []
        if changing:
            # Originals are durable before the first label changes (trees: the helper journals each entry).
            # On the loop, not the writer thread: no claim may appear between _check_nesting and this.
            self.store.put_claims(changing)
            # Rolls back itself on failure.
            refused = await _to_thread_to_the_end(relabel.apply_probed, probed.present, journal_for, done_already)
            ok = {c.path for c in changing} - {p.path for p in refused}
            # On the loop too: once the labels are on disk, Query must not find them "pending" for a commit.
            self.store.set_claims_phase(a.uuid, sorted(ok), "applied")
        if refused:
            # Storage that refused the label (read-only for svirtd, no xattrs): nothing changed on it.
            await self.store.write(self.store.delete_claims, a.uuid, [p.path for p in refused])
            await self._report_unlabelable(domain, a, refused)
        wanted = {c.path for c in claims} - {p.path for p in refused}
        gone = [c for path, c in existing.items() if path not in wanted]
        if gone:
            await self.restore(a.uuid, gone)
            await self.store.write(self.store.delete_claims, a.uuid, [c.path for c in gone])

    def _check_conflicts(self, a: Assignment, item: relabel.Probed, sharers: Sequence[Claim]) -> None:
        """sharers: every claim on the item's inode (this guest's included)."""
        for other in sharers:
            if other.uuid == a.uuid:
                continue
            # Private is never shared; shared and read-only want different labels on the same file.
            if ResourceClass.PRIVATE in (other.rclass, item.planned.resource.rclass) \
                    or other.rclass is not item.planned.resource.rclass:
                owner = self.store.get(other.uuid)
                owner_name = owner.name if owner else other.uuid
                raise ResourceConflict(
                    f"{item.path} ({item.planned.resource.device}) is already a resource of guest {owner_name} "
                    f"({other.uuid}) as {other.path} [{other.rclass.value}]; mark it <shareable/> or "
                    "<readonly/> in both guests, or give this guest its own copy"
                )

    async def restore(self, uuid: str, claims: Iterable[Claim]) -> list[relabel.RestoreOutcome]:
        """Restore the claims no other guest still holds. Shared and read-only ones stay as long as anyone
        uses them; with restore_shared = false for good (libvirt's way: a guest on another host sharing
        the storage may use them without this host knowing). What libvirt's driver labels, libvirt
        restores when the guest stops: svirtd only drops its claim."""
        to_restore: list[Claim] = []
        kept: list[relabel.RestoreOutcome] = []
        for c in claims:
            others = [o for o in self.store.claims_on_inode(c.dev, c.ino) if o.uuid != uuid]
            if c.applier is Applier.LIBVIRT:
                kept.append(relabel.RestoreOutcome(c.path, False, "left to libvirt (it restores what it labeled "
                                                                  "when the guest stops)", intended=True))
            elif others:
                kept.append(relabel.RestoreOutcome(c.path, False, f"kept: still used by {len(others)} other guest(s)",
                                                   intended=True))
            elif c.rclass is not ResourceClass.PRIVATE and not self.config.restore_shared:
                if c.kind is ResourceKind.TREE:
                    relabel.discard_journal(relabel.claim_journal(c, self.config.journal_dir))
                kept.append(relabel.RestoreOutcome(
                    c.path, False, f"left as {c.expected}: {c.rclass.value} files are not restored (restore_shared = "
                    f"false: other hosts' guests may use them); `restorecon {c.path}` puts back the policy default",
                    intended=True))
            else:
                to_restore.append(c)
        if to_restore:
            await self.store.write(self.store.set_claims_phase, uuid, [c.path for c in to_restore], "restoring")
        outcomes = await _to_thread_to_the_end(relabel.restore_claims, to_restore, self.config.journal_dir,
                                           self.defaults)
        return kept + outcomes


def _original_of(sharers: Sequence[Claim], current: str | None) -> str | None:
    """What the file carried before svirtd: another guest's record of it if it is shared."""
    for other in sharers:
        if other.applier is Applier.SVIRTD and other.original is not None:
            return other.original
    return current if current is not None else ""


async def _to_thread_to_the_end(fn: Callable[..., T], *args: Any) -> T:
    """fn in a worker thread that labels through the caller's open descriptors: a cancellation (svirtd
    stopping, a reload's reconcile cancelled) waits until the thread is done before it goes on, so the
    descriptors are not closed (and their numbers reused) under a thread still writing through them,
    nor the locks released while it writes."""
    return await to_the_end(asyncio.ensure_future(asyncio.to_thread(fn, *args)))
