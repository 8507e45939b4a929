"""Relabel planning (pure) and its application (through labels.py and the tree helper), with rollback.

A relabel is a small transaction: plan every resource's target label (pure, refuses hostile paths
before anything is opened) -> probe (open each resource safely, read identity and current label) ->
the manager records the claims with their originals in the store -> apply in sorted path order ->
on any failure restore what was already changed, in reverse order.

Single files are labeled here, through O_PATH descriptors. Directory trees are labeled by the
treewalk helper process, which journals every original before changing it.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from . import labels
from .errors import FAILING_STORAGE_ERRNOS, Cancelled, RelabelFailed, ResourceConflict, StorageFailed, UnsafePath
from .image_header import HEADER_BYTES, Backing, HeaderError, UnsafeBacking, qcow2_backing
from .jobs import JobControl, ProgressLines, current_job
from .label_plan import LabelDecision
from .models import Applier, Level, Resource, ResourceClass, ResourceKind
from .path_locks import inode_key, path_key
from .path_policy import Nesting, check_resource_path, nesting
from .policy import LabelSpec
from .store import Claim
from .treewalk import journal_run_glob, next_run

log = logging.getLogger(__name__)


# -- planning (pure) ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedResource:
    resource: Resource
    target: str  # the context the resource must carry
    # SVIRTD: svirtd writes the label. LIBVIRT: libvirt's driver labels it while the guest runs; svirtd
    # only claims it (one owner per private file, no tree overlapping another guest's files).
    applier: Applier = Applier.SVIRTD

    @property
    def labels(self) -> bool:
        return self.applier is Applier.SVIRTD


@dataclass(frozen=True)
class RelabelPlan:
    uuid: str
    level: Level
    items: tuple[PlannedResource, ...]  # sorted by path: the lock and apply order
    unhandled: tuple[LabelDecision, ...]  # nobody labels these (Query says why)
    refused: tuple[tuple[Resource, str], ...] = ()  # optional resources svirtd may not touch, and why


def plan_relabel(decisions: Iterable[LabelDecision], uuid: str, level: Level,
                 denied_trees: Sequence[str] = ()) -> RelabelPlan:
    """Every labeled resource with its target; UnsafePath for the first mandatory path that may never
    be touched (by svirtd, nor by libvirt on svirtd's word). An optional resource (a serial log, a
    socket qemu creates) that is refused is reported on that resource and never un-isolates the guest."""
    items: list[PlannedResource] = []
    unhandled: list[LabelDecision] = []
    refused: list[tuple[Resource, str]] = []
    for d in decisions:
        if d.applier is Applier.NOBODY or d.resource.kind in (ResourceKind.NONE, ResourceKind.CHAR):
            unhandled.append(d)
            continue
        try:
            check_resource_path(d.resource, denied_trees)
        except UnsafePath as exc:
            if not d.resource.optional:
                raise
            refused.append((d.resource, str(exc)))
            continue
        items.append(PlannedResource(resource=d.resource, target=d.target, applier=d.applier))
    items.sort(key=lambda p: p.resource.path)
    return RelabelPlan(uuid=uuid, level=level, items=tuple(items), unhandled=tuple(unhandled),
                       refused=tuple(refused))


def with_backing_chains(plan: RelabelPlan, spec: LabelSpec, denied_trees: Sequence[str] = ()) -> RelabelPlan:
    """The plan plus the backing layers svirtd-labeled qcow2 images name in their headers (where the
    definition gives no <backingStore>): read-only content, as libvirt labels the chain it probes.
    UnsafePath when a header names a file svirtd may never touch (an image pointing at /etc/shadow)."""
    known = {p.resource.path for p in plan.items}
    found: list[PlannedResource] = []
    queue = [p for p in plan.items if p.labels and p.resource.probe_format == "qcow2"]
    content = str(spec.label_for(ResourceClass.READONLY, plan.level))
    depth = 0
    while queue and depth < MAX_CHAIN:
        depth += 1
        nxt: list[PlannedResource] = []
        for item in queue:
            backing = _read_backing(item.resource)
            if backing is None or backing.path in known:
                continue
            known.add(backing.path)
            res = Resource(path=backing.path, device=f"{item.resource.device.split(' backing')[0]} backing layer "
                           f"{depth} (probed)", kind=ResourceKind.FILE, rclass=ResourceClass.READONLY,
                           probe_format=backing.format if backing.format == "qcow2" else "", backing=True)
            check_resource_path(res, denied_trees)
            layer = PlannedResource(resource=res, target=content)
            found.append(layer)
            nxt.append(layer)
        queue = nxt
    if not found:
        return plan
    items = sorted((*plan.items, *found), key=lambda p: p.resource.path)
    return RelabelPlan(uuid=plan.uuid, level=plan.level, items=tuple(items), unhandled=plan.unhandled,
                       refused=plan.refused)


MAX_CHAIN = 16  # layers followed below a top image (qemu's own limit is far deeper; images here are not)


def _read_backing(res: Resource) -> Backing | None:
    """The backing file a qcow2 image names; None when it names none or cannot be read (the probe of
    the image itself then reports what is wrong with it). UnsafePath for a name svirtd will not guess."""
    try:
        with labels.open_resource(res.path, res.kind) as opened:
            header = labels.read_head(opened, HEADER_BYTES)
    except (OSError, UnsafePath):
        return None
    try:
        return qcow2_backing(header, res.path)
    except UnsafeBacking as exc:
        raise UnsafePath(f"{res.path} ({res.device}): {exc}") from None
    except HeaderError as exc:
        log.warning("%s (%s): cannot follow its backing chain: %s", res.path, res.device, exc)
        return None


# -- probing (I/O through labels.py) --------------------------------------------------------------


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

    @property
    def is_tree(self) -> bool:
        return self.planned.resource.kind is ResourceKind.TREE

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
    """Open every planned resource. UnsafePath / ResourceConflict (everything closed) if any is refused."""
    result = ProbeResult()
    try:
        for item in plan.items:
            try:
                opened = labels.open_resource(item.resource.path, item.resource.kind)
            except FileNotFoundError:
                result.absent.append(item)
                continue
            except OSError as exc:  # the storage failed (EIO...): name the resource, not a path component
                raise OSError(exc.errno, exc.strerror, item.resource.path) from exc
            probed = Probed(planned=item, opened=opened)
            if opened.path != item.resource.path:
                # A symlinked parent or a /dev/disk link: judge the place it really lives in.
                check_resource_path(item.resource.model_copy(update={"path": opened.path}), denied_trees)
            if item.labels and labels.libvirt_remembers(opened):
                opened.close()
                raise ResourceConflict(
                    f"{item.resource.path}: libvirt's own SELinux driver has remembered a label on it "
                    f"({labels.LIBVIRT_REMEMBER}), so a guest confined by libvirt's sVirt uses it. svirtd does "
                    "not fight libvirt: stop that guest, or let one of the two manage the host "
                    "(security_driver = \"none\" in /etc/libvirt/qemu.conf hands it to svirtd)")
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


def lock_keys(plan: RelabelPlan, held: Iterable[Claim]) -> set[str]:
    """The keys a transaction on these resources locks: every path, and the inode each path leads
    to right now (another guest may reach the same file by another name). Only a guess at the
    inodes: the caller checks the probed ones against it and retries if a file was swapped."""
    keys = {path_key(c.path) for c in held} | {inode_key(c.dev, c.ino) for c in held}
    for item in plan.items:
        keys.add(path_key(item.resource.path))
        try:
            st = os.stat(item.resource.path)
        except OSError:
            continue
        keys.add(inode_key(st.st_dev, st.st_ino))
    return keys


def probed_keys(probed: ProbeResult) -> set[str]:
    """Inode keys of the files a probe opened (and the transaction will label)."""
    return {inode_key(p.opened.st.st_dev, p.opened.st.st_ino) for p in probed.present if p.opened is not None}


def find_nesting(present: Sequence[Probed], others: Sequence[Claim]) -> tuple[Probed, Claim, Nesting] | None:
    """The first resource that lies inside another guest's directory tree, or is a tree holding
    another guest's resource: relabeling it would hand that guest's files to this one (or the
    reverse). Judged on real paths (symlinked parents resolved), so an alias hides nothing."""
    for item in present:
        assert item.opened is not None
        is_tree = item.planned.resource.kind is ResourceKind.TREE
        for other in others:
            how = nesting(item.opened.path, is_tree, other.where, other.kind is ResourceKind.TREE)
            if how is not Nesting.NONE:
                return item, other, how
    return None


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


# -- directory trees: the helper process ----------------------------------------------------------


def journal_prefix(journal_dir: Path, uuid: str, rclass: ResourceClass, dev: int, ino: int) -> Path:
    """Where a tree's originals are journaled. A shared or read-only tree has ONE journal whoever labels
    it: its first labeler records the originals, later ones find the target and record nothing, and
    the last one to let go must put those originals back."""
    owner = uuid if rclass is ResourceClass.PRIVATE else "shared"
    return journal_dir / f"{owner}-{dev}-{ino}"


# Where this process imported svirtd from (a venv, or the package's private /usr/lib/svirtd/python,
# which the helper's `python3 -m` would not search on its own).
IMPORT_ROOT = str(Path(__file__).resolve().parent.parent)


def run_treewalk(action: str, root: str, target: str, journal: Path | None = None,
                 inode: tuple[int, int] | None = None, *, root_fd: int | None = None, run: int | None = None,
                 sweep: bool = False) -> dict[str, int | str | float]:
    """Run `python -m svirtd.treewalk` and return its summary; RelabelFailed when it cannot do its job.

    root_fd: the descriptor svirtd checked the root through, handed to the helper, which then works on
    that very directory (root only names it). run: the journal run a label writes, or the only one a
    restore reads. sweep: restore of a private tree (treewalk.restore_tree)."""
    cmd = [sys.executable, "-m", "svirtd.treewalk", action, "--root", root, "--target", target]
    if root_fd is not None:
        cmd += ["--root-fd", str(root_fd)]
    if run is not None:
        cmd += ["--run", str(run)]
    if journal is not None:
        cmd += ["--journal", str(journal)]
    if inode is not None:
        cmd += ["--inode", f"{inode[0]}:{inode[1]}"]
    if sweep:
        cmd.append("--sweep")
    pythonpath = os.pathsep.join(filter(None, (IMPORT_ROOT, os.environ.get("PYTHONPATH"))))
    env = {**os.environ, "PYTHONPATH": pythonpath}
    fds = () if root_fd is None else (root_fd,)
    job = current_job.get()
    if job is None:
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd="/", env=env, pass_fds=fds)
        stdout, stderr = proc.stdout, proc.stderr
    else:
        # Only a label run stops on a cancel: a restore (the rollback of that very cancel) runs to its end.
        stdout, stderr = _run_for_job(cmd, env, fds, job, cancellable=action == "label")
    try:
        result: dict[str, int | str | float] = json.loads(stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise RelabelFailed(f"the tree helper failed on {root}: {stderr.strip()[-400:] or 'no output'}") from None
    if "fatal" in result:
        raise RelabelFailed(f"tree {root}: {result['fatal']}")
    return result


def _run_for_job(cmd: list[str], env: dict[str, str], fds: tuple[int, ...], job: JobControl,
                 cancellable: bool) -> tuple[str, str]:
    """The helper, for a job: its progress lines counted into the job as they come; on the job's cancel
    it is killed (its journal is durable before any label it wrote: the caller's rollback restores it)
    and Cancelled raised. (stdout, stderr) when it ends by itself."""
    if cancellable and job.cancelled:
        raise Cancelled("cancelled before the tree was labeled")
    # The rollback of a cancelled job is not counted: its progress stays where the cancel stopped it.
    walk = None if job.cancelled else job.walk()
    lines = ProgressLines()
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, os.fdopen(read_end, "rb", 0) as progress:
        try:
            # Its own process group: a cancel kills the helper and every worker it forked at once.
            proc = subprocess.Popen([*cmd, "--progress-fd", str(write_end)], stdout=out, stderr=err, cwd="/",
                                    env=env, pass_fds=(*fds, write_end), start_new_session=True)
        finally:
            os.close(write_end)
        while True:
            if cancellable and job.cancelled:
                _kill_helper(proc, progress)
                raise Cancelled("cancelled: the tree's labels were rolled back")
            if select.select([progress], [], [], 0.1)[0]:
                chunk = progress.read(65536)
                if not chunk:  # every process holding the write end (helper and workers) is gone
                    break
                for what, number in lines.feed(chunk):
                    if walk is not None:
                        job.add(walk, what, number)
        proc.wait()
        out.seek(0)
        err.seek(0)
        return out.read().decode(errors="replace"), err.read().decode(errors="replace")


def _kill_helper(proc: subprocess.Popen[bytes], progress: io.FileIO) -> None:
    """SIGKILL the helper's process group, and return once none of its processes can write a label any
    more: each holds the progress pipe's write end until it is gone, so that is end of file."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and select.select([progress], [], [], 1)[0] and progress.read(65536):
        pass


def label_tree(item: Probed, journal: Path, run: int | None = None) -> dict[str, int | str | float]:
    assert item.opened is not None
    st = item.opened.st
    result = run_treewalk("label", item.opened.path, item.planned.target, journal, (st.st_dev, st.st_ino),
                          root_fd=item.opened.fd, run=run)
    if int(result["errors"]):
        raise RelabelFailed(f"tree {item.path}: {result['errors']} entries could not be labeled "
                            f"(first: {result['first_error']})")
    log.info("tree %s: %s entries, %s relabeled in %ss (left alone: %s symlinks, %s mount points, "
             "%s hard-linked files, %s device nodes, FIFOs or sockets, %s changed during the walk)", item.path,
             result["entries"], result["changed"], result["seconds"], result["symlinks"], result["mounts"],
             result["hardlinks"], result["specials"], result["raced"])
    return result


# -- applying and rolling back --------------------------------------------------------------------


JournalFor = Callable[[Probed], Path]


def apply_probed(items: Sequence[Probed], journal_for: JournalFor,
                 done_already: Callable[[Probed], bool] = lambda _p: False) -> list[Probed]:
    """Write every target svirtd applies; on failure roll back in reverse order and raise RelabelFailed.

    done_already(item): a tree whose last relabel completed and whose root still carries the target
    is not walked again (the fast path: a re-converge of a 100k-file share costs one getxattr).
    Returns the files whose storage refused a label (read-only, no xattr support): nothing changed on
    them, they are reported as unlabelable, and the guest's other resources keep their labels.
    """
    done: list[tuple[Probed, int]] = []  # with the journal run of a tree (0 for a single file)
    refused: list[Probed] = []
    for item in items:
        assert item.opened is not None
        if not item.planned.labels:
            continue  # libvirt's driver labels it while the guest runs
        if item.is_tree:
            if done_already(item):
                continue
            journal = journal_for(item)
            run = next_run(journal)
            try:
                label_tree(item, journal, run)
            except RelabelFailed:
                _rollback([*done, (item, run)], journal_for)  # a tree's failures are in the error already
                raise
            done.append((item, run))
            continue
        if item.current == item.planned.target:
            continue
        try:
            labels.set_label(item.opened, item.planned.target)
        except labels.LabelUnsupported as exc:
            item.unlabelable = exc
            refused.append(item)
            continue
        except OSError as exc:
            # The write failed, but what it left is not known (ext4 on a dying disk has changed the label
            # in memory and cannot commit it): this file is put back too.
            stuck = _rollback([*done, (item, 0)], journal_for)
            raise _write_failed(item.path, exc, stuck) from exc
        done.append((item, 0))
    return refused


def _write_failed(path: str, exc: OSError, stuck: list[str]) -> RelabelFailed | StorageFailed:
    """The error for a label write the storage refused: StorageFailed when the storage itself failed
    (EIO...), naming the file (never /proc/self/fd/N) and saying plainly what could not be put back."""
    why = os.strerror(exc.errno) if exc.errno else str(exc)
    if not stuck:
        after, then = "every change was rolled back", "isolate the guest again"
    else:
        after = (f"{len(stuck)} could not be put back yet ({'; '.join(stuck)[:600]}): their originals stay "
                 "recorded and the guest's pair reserved until they are restored")
        then = "`svirtctl release` the guest (svirtd also retries when it starts), then isolate it again"
    if exc.errno in FAILING_STORAGE_ERRNOS:
        return StorageFailed(f"writing the label of {path}: the storage answered with an error ({why}: a failing "
                             f"disk, a broken network mount?); {after}. Mend the storage, then {then}")
    return RelabelFailed(f"relabeling {path} failed ({why}); {after}")


def _rollback(done: list[tuple[Probed, int]], journal_for: JournalFor) -> list[str]:
    """Put back what was labeled, newest first; what could not be put back, as "path: why"."""
    stuck: list[str] = []
    for item, run in reversed(done):
        assert item.opened is not None
        try:
            if item.is_tree:
                _rollback_tree(item, journal_for(item), run)
            elif item.current is None:
                labels.remove_label(item.opened)
            else:
                labels.set_label(item.opened, item.current)
        except (OSError, labels.LabelUnsupported, RelabelFailed) as exc:  # keep going: restore what we can
            log.error("rollback of %s failed: %s", item.path, exc)
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            stuck.append(why if why.startswith(item.path) else f"{item.path}: {why}")
    return stuck


def _rollback_tree(item: Probed, journal: Path, run: int) -> None:
    """Undo a tree relabel, then forget the journals it replayed: kept, an original they remember would
    outvote a label an admin sets later (first record per path wins). A private tree's journals are all
    this guest's, replayed whole (and swept); a shared or read-only tree's journal holds the runs of
    every guest that labeled it, so only this run is undone: the others still use the tree."""
    assert item.opened is not None
    private = item.planned.resource.rclass is ResourceClass.PRIVATE
    only = None if private else run
    st = item.opened.st
    result = run_treewalk("restore", item.opened.path, item.planned.target, journal, (st.st_dev, st.st_ino),
                          root_fd=item.opened.fd, run=only, sweep=private)
    if int(result["errors"]):
        raise RelabelFailed(f"{result['errors']} entries not restored (first: {result['first_error']}); "
                            f"journal kept at {journal}")
    discard_journal(journal, only)


# -- restoring ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RestoreOutcome:
    path: str
    restored: bool
    message: str
    intended: bool = False  # not restored on purpose (still in use, shared): no warning
    # Not restored, and svirtd's labels may still be on it: the release must not free the pair yet.
    # (Gone, replaced or relabeled by somebody since: nothing of svirtd's left to restore there.)
    retry: bool = False


def release_pending_note(name: str, pending: Sequence[RestoreOutcome]) -> str:
    """What Query and the failed Release say when a release could not restore everything."""
    what = "; ".join(f"{o.path}: {o.message}" for o in pending)
    return (f"release incomplete: {len(pending)} resource(s) could not be restored ({what}). Its pair stays "
            f"reserved until they are: fix that, then `svirtctl release {name}` again (svirtd also retries "
            "when it starts)")


def claim_journal(claim: Claim, journal_dir: Path) -> Path:
    return journal_prefix(journal_dir, claim.uuid, claim.rclass, claim.dev, claim.ino)


def discard_journal(journal: Path, run: int | None = None) -> None:
    """Forget a tree's originals, or those of one run (the tree stays as it is)."""
    for part in journal.parent.glob(f"{journal.name}.*" if run is None else journal_run_glob(journal, run)):
        part.unlink(missing_ok=True)


class DefaultLabelLookup(Protocol):
    """The policy's default label for a path (selabel_lookup), None when it has none."""

    def lookup(self, path: str, mode: int) -> str | None: ...


def restore_claims(claims: Iterable[Claim], journal_dir: Path,
                   defaults: DefaultLabelLookup | None = None) -> list[RestoreOutcome]:
    """Put back what each claimed resource carried before svirtd touched it.

    A file that was replaced since (other inode) or relabeled by somebody else is left alone,
    with a warning: restoring over someone else's change would be a second surprise.
    """
    outcomes: list[RestoreOutcome] = []
    for claim in sorted(claims, key=lambda c: c.path, reverse=True):
        if claim.kind is ResourceKind.TREE:
            outcomes.append(_restore_tree(claim, journal_dir))
        else:
            outcomes.append(_restore_one(claim, defaults))
    return outcomes


def _restore_tree(claim: Claim, journal_dir: Path) -> RestoreOutcome:
    journal = claim_journal(claim, journal_dir)
    try:
        with labels.open_resource(claim.path, claim.kind) as opened:
            if (opened.st.st_dev, opened.st.st_ino) != (claim.dev, claim.ino):
                return RestoreOutcome(claim.path, False, "left alone: the directory was replaced since")
            result = run_treewalk("restore", opened.path, claim.expected, journal, (claim.dev, claim.ino),
                                  root_fd=opened.fd, sweep=claim.rclass is ResourceClass.PRIVATE)
    except FileNotFoundError:
        result = {"entries": 0, "changed": 0, "errors": 0}
    except (UnsafePath, RelabelFailed, OSError) as exc:  # EIO, EACCES...: it may still carry the pair
        return RestoreOutcome(claim.path, False, f"not restored: {exc}", retry=True)
    if int(result["errors"]):
        return RestoreOutcome(claim.path, False, f"tree partly restored: {result['errors']} errors "
                                                 f"(first: {result.get('first_error')}); journal kept at {journal}",
                              retry=True)
    discard_journal(journal)
    return RestoreOutcome(claim.path, True, f"tree restored: {result['changed']} of {result['entries']} entries")


def _restore_one(claim: Claim, defaults: DefaultLabelLookup | None) -> RestoreOutcome:
    try:
        opened = labels.open_resource(claim.path, claim.kind)
    except FileNotFoundError:
        return RestoreOutcome(claim.path, False, "gone: nothing to restore")
    except (UnsafePath, OSError) as exc:  # EIO, EACCES...: it may still carry the pair
        return RestoreOutcome(claim.path, False, f"not restored: {exc}", retry=True)
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
                return RestoreOutcome(claim.path, False, "left labeled: original and policy default unknown",
                                      retry=True)
            if original == "":
                labels.remove_label(opened)
            else:
                labels.set_label(opened, original)
        except (OSError, labels.LabelUnsupported) as exc:
            return RestoreOutcome(claim.path, False, f"restore failed: {exc}", retry=True)
    return RestoreOutcome(claim.path, True, f"restored to {original or '(no label)'}")
