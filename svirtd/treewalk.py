"""Directory-tree relabeling, run as a helper process: `python -m svirtd.treewalk label|restore|check ...`.

Why a separate process: a safe walk must never resolve more than one path component at a time (the
tree may be writable by a guest, who could swap a directory for a symlink to /etc mid-walk). The walk
therefore works inside each directory with fchdir() on an fd opened O_NOFOLLOW, and reads entries by
their bare names. fchdir() changes the working directory of a whole process, so it cannot happen inside
the threaded daemon; here it can, and the helper can also fork workers to use every core.

Bounded: the walk is depth first and holds a few directory fds whatever the tree's width or depth (see
walk_tree), well within the default limit of 1,024 open files. Whatever one entry does (a name that is
not UTF-8, an error), it is counted and reported and the walk goes on: the caller learns that not
everything was done, never that the helper died.

Crash safety: every original label is appended to a journal, written completely and fdatasync'ed
BEFORE that entry is changed; a journal that cannot take a batch (disk full, file size limit) stops
the run before anything of that batch is labeled. A run killed half-way is simply run again (entries
already carrying the target are skipped; their originals are already journaled); restore replays
journals oldest run first, first record per path wins, and ignores a torn last record and any record
whose label is not a context. The helper dies with its parent (PR_SET_PDEATHSIG).

Labels only directories and regular files. Never: follows a symlink, crosses a mount point (another
filesystem's, by st_dev; a bind mount of the tree's own, by its directory entry's inode number, on the
DIRENT_INODE_FS filesystems where that number is exact), relabels a hard-linked file (its other names
may live outside the tree), labels a device node, FIFO or socket (a guest with a writable share can
create them; svirt_t may use block devices carrying its label), or opens a file for I/O. An entry is
scanned by name, but labeled (and restored) through an O_PATH descriptor of it, re-checked right before
the write (/proc/self/fd/N names exactly that inode): the inode the scan saw and journaled, still of a
labelable kind with one link, still carrying the journaled original. A name swapped meanwhile (for a
hard link to a file outside the tree, say) is left alone and counted as raced.

Cost per labeled entry (docs/architecture.md, "Tree relabel cost"): getxattr by name in the scan (the
original, journaled), then open O_PATH, fstat, getxattr, setxattr and close on the descriptor; an lstat
too where dirent inode numbers cannot be trusted. `chcon -R` makes one call, lsetxattr by name.

Standalone on purpose: stdlib only on the labeling path, so it starts in tens of milliseconds.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import functools
import json
import os
import re
import signal
import stat
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from stat import S_ISDIR, S_ISLNK, S_ISREG

XATTR = "security.selinux"
Summary = dict[str, int | str | float]
BATCH = 4096  # entries journaled per fdatasync
MAX_PENDING_DIRS = 64  # directory fds held while a batch is pending
CACHED_DIRS = 16  # directory fds a walk keeps open on its way down (the root apart)
PR_SET_PDEATHSIG = 1
PROC_FDS = "/proc/self/fd"  # this process's descriptors by number (fork: the child's own, looked up anew)
# Filesystems whose directory entries carry the inode's own number (d_ino == st_ino) everywhere but at a
# mount point, where d_ino is the covered inode's. On them a regular file needs no lstat to be scanned
# (its dirent gives type and inode; link count and mount are checked on its descriptor before the write),
# and a bind mount of the same filesystem, which st_dev cannot tell, shows itself by the mismatch.
# Elsewhere (FUSE, overlayfs, NFS...) d_ino may legitimately differ from st_ino: every entry is lstat'ed.
DIRENT_INODE_FS = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs"})
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
# Journal format 2: this header, then (relpath, original, "dev:ino") records, each field NUL-terminated.
# Without it, format 1: (relpath, original) records (journals of an older svirtd, still restored).
JOURNAL_HEADER = b"svirtd-journal 2\0"
# user:role:type[:MLS range]: what a journaled original must look like to be written back.
_CONTEXT = re.compile(rb"[A-Za-z0-9_.]+:[A-Za-z0-9_.]+:[A-Za-z0-9_.]+(?::[A-Za-z0-9_.:,-]+)?")


def die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def open_root(path: str) -> int:
    """fd of the tree root, every component opened with O_NOFOLLOW."""
    fd = os.open("/", _DIR_FLAGS)
    for part in [p for p in path.split("/") if p]:
        nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
        os.close(fd)
        fd = nfd
    return fd


def checked_root(path: str, inherited: int | None, inode: str | None) -> int:
    """Directory fd of the tree root, -1 when it is not DEV:INO. The very directory svirtd checked when it
    hands over its fd; else opened one component at a time. Never opened again by path afterwards: a
    directory swapped in under the same name is never the one worked on."""
    if inherited is not None:
        rfd = os.open(".", _DIR_FLAGS, dir_fd=inherited)
        os.close(inherited)
    else:
        rfd = open_root(path)
    st = os.fstat(rfd)
    if inode and f"{st.st_dev}:{st.st_ino}" != inode:
        os.close(rfd)
        return -1
    return rfd


@functools.cache
def fs_type(dev: int) -> str:
    """The type of the filesystem mounted from dev ('' when no mount in this namespace shows it)."""
    want = f"{os.major(dev)}:{os.minor(dev)}"
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                fields = line.split()
                if len(fields) > 7 and fields[2] == want and "-" in fields[6:]:
                    return fields[fields.index("-", 6) + 1]
    except OSError:
        pass
    return ""


def mount_id(fd: int) -> int:
    """The mount fd's file was opened through (-1 when unknown): tells a mount point from a swapped name."""
    try:
        with open(f"/proc/self/fdinfo/{fd}", "rb") as info:
            for line in info:
                if line.startswith(b"mnt_id:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return -1


def get_label(name: str, follow: bool = False) -> bytes | None:
    """The label of name (follow: of what it names, for /proc/self/fd/N), None when it has none."""
    try:
        return os.getxattr(name, XATTR, follow_symlinks=follow).rstrip(b"\0")
    except OSError as exc:
        if exc.errno == errno.ENODATA:
            return None
        raise


def fsencode(name: str) -> bytes:
    """os.fsencode of a str, as one C call: it runs once per entry on the labeling path."""
    return name.encode(_FS_ENCODING, _FS_ERRORS)


_FS_ENCODING, _FS_ERRORS = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()


def _label_or_empty(proc: str) -> bytes:
    """get_label of what /proc/self/fd/N names (cwd: PROC_FDS), b"" for none: one call per labeled entry."""
    try:
        return os.getxattr(proc, XATTR).rstrip(b"\0")
    except OSError as exc:
        if exc.errno == errno.ENODATA:
            return b""
        raise


def show(rel: bytes) -> str:
    """A relative path for messages: any name, not only UTF-8 ones."""
    return rel.decode("utf-8", "backslashreplace")


Ident = tuple[int, int]  # (st_dev, st_ino)


def labelable(st: os.stat_result, root_dev: int) -> bool:
    """What a tree relabel may label: a directory on the root's filesystem, a regular file with one link."""
    if stat.S_ISDIR(st.st_mode):
        return st.st_dev == root_dev
    return stat.S_ISREG(st.st_mode) and st.st_nlink == 1


Visit = Callable[[int, bytes], list[tuple[str, Ident]]]


@dataclass
class _Dir:
    """A directory on the walk's way down."""

    name: str  # in its parent ('' for the root)
    rel: bytes  # below the root: b"" or b"a/b/"
    ident: Ident  # the inode seen when its parent was visited
    fd: int  # -1 once dropped (CACHED_DIRS)
    todo: list[tuple[str, Ident]] = field(default_factory=list)  # subdirectories still to visit


def walk_tree(rfd: int, visit: Visit, stats: Stats, moved_is_error: bool) -> None:
    """Depth first over rfd and the directories below it: visit(dfd, rel) is called for each with cwd =
    that directory, and returns the subdirectories to enter (with the inode it saw them as).

    Holds at most CACHED_DIRS + 2 directory fds (the root's, the deepest CACHED_DIRS on the way down, and
    two while one is opened again), so neither 1,500 subdirectories nor a tree thousands deep exhausts
    the open files limit: a directory whose fd was dropped is opened again from its nearest open ancestor,
    name by name, each step checked against the inode seen on the way down. A directory moved or gone
    meanwhile is never walked in its new place: counted as raced, and as an error if moved_is_error."""
    st = os.fstat(rfd)
    os.fchdir(rfd)
    stack = [_Dir("", b"", (st.st_dev, st.st_ino), rfd)]
    stack[0].todo = _visit(visit, rfd, b"", stats)
    try:
        while stack:
            top = stack[-1]
            if not top.todo:
                stack.pop()
                if stack and top.fd >= 0:  # never the root: it is the caller's
                    os.close(top.fd)
                continue
            name, ident = top.todo.pop()
            rel = top.rel + os.fsencode(name) + b"/"
            parent = _reopen(stack, stats, moved_is_error)
            child = -1 if parent < 0 else _open_dir(parent, name, ident, rel, stats, moved_is_error)
            if parent < 0:
                top.todo.clear()
            if child < 0:
                continue
            stack.append(_Dir(name, rel, ident, child))
            far = stack[-1 - CACHED_DIRS] if len(stack) > CACHED_DIRS + 1 else stack[0]
            if far is not stack[0] and far.fd >= 0:
                os.close(far.fd)
                far.fd = -1
            os.fchdir(child)
            stack[-1].todo = _visit(visit, child, rel, stats)
        progress_tick(stats, final=True)
    finally:
        for d in stack[1:]:
            if d.fd >= 0:
                os.close(d.fd)


class JournalFailed(OSError):
    """The journal took a batch only in part, or not at all: the run stops, nothing of it is labeled."""


def _visit(visit: Visit, dfd: int, rel: bytes, stats: Stats) -> list[tuple[str, Ident]]:
    try:
        return visit(dfd, rel)
    except JournalFailed:
        raise
    except Exception as exc:  # e.g. scandir of a directory removed meanwhile: that directory only
        stats.error(show(rel) or ".", exc)
        return []
    finally:
        progress_tick(stats)


def _reopen(stack: list[_Dir], stats: Stats, moved_is_error: bool) -> int:
    """fd of the deepest directory on the stack, opened again from its nearest open ancestor if it was
    dropped; -1 when one of them is no longer where (and what) it was."""
    top = stack[-1]
    if top.fd >= 0:
        return top.fd
    start = max(i for i, d in enumerate(stack) if d.fd >= 0)
    fd = stack[start].fd
    for d in stack[start + 1:]:
        nfd = _open_dir(fd, d.name, d.ident, d.rel, stats, moved_is_error)
        if fd != stack[start].fd:
            os.close(fd)
        if nfd < 0:
            return -1
        fd = nfd
    top.fd = fd
    return fd


def _open_dir(parent: int, name: str, ident: Ident, rel: bytes, stats: Stats, moved_is_error: bool) -> int:
    """fd of a subdirectory if it is still the inode seen, else -1 (counted)."""
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
            stats.error(show(rel), exc)
            return -1
        fd = -1
    if fd >= 0:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) == ident:
            return fd
        os.close(fd)
    stats.raced += 1
    if moved_is_error:
        stats.error(show(rel), OSError(errno.ESTALE, "moved or replaced during the walk"))
    return -1


class Stats:
    def __init__(self) -> None:
        self.entries = self.changed = self.symlinks = self.mounts = self.hardlinks = self.specials = 0
        self.raced = self.errors = 0
        self.first_error = ""

    def error(self, where: str, exc: BaseException) -> None:
        self.errors += 1
        if not self.first_error:
            what = exc.strerror if isinstance(exc, OSError) and exc.strerror else f"{type(exc).__name__}: {exc}"
            self.first_error = f"{where}: {what}"

    def as_dict(self) -> Summary:
        return dict(vars(self))

    def add(self, other: Summary) -> None:
        for key, value in other.items():
            if isinstance(value, int):
                setattr(self, key, getattr(self, key) + value)
            elif isinstance(value, str) and value and not self.first_error:
                self.first_error = value


class Labeler:
    """One worker's share of a labeling walk."""

    def __init__(self, target: bytes, journal: Path, root_dev: int) -> None:
        self.target = target
        self.root_dev = root_dev
        self.dirent_inodes = fs_type(root_dev) in DIRENT_INODE_FS  # scan regular files without an lstat
        # A new file each run and worker: its header goes out with the first batch.
        self.journal_fd = os.open(journal, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self.stats = Stats()
        self._header = JOURNAL_HEADER  # written with the first batch
        self._records: list[bytes] = []
        # (scan number, our dup of the directory fd, its relpath, [(name, inode scanned, original)]) waiting
        # for the journal sync. Scan numbers, not fd numbers, identify a directory: a closed fd's number is
        # reused by the next open.
        self._pending: list[tuple[int, int, bytes, list[tuple[str, Ident, bytes]]]] = []
        self._scan_no = 0
        self._pending_count = 0

    def visit_entry(self, dfd: int, rel: bytes, entry: os.DirEntry[str]) -> Ident | None:
        """Label one directory entry (cwd is its directory); its inode when it is a directory to enter.

        The hot path of a walk (once per entry): the dirent's type settles symlinks without a stat, and on
        a DIRENT_INODE_FS filesystem regular files too (one getxattr each: the link count and the mount
        are checked on the entry's descriptor right before its label is written). Other entries get an
        lstat: a directory's st_dev tells a mount of another filesystem, its d_ino a bind mount."""
        stats = self.stats
        stats.entries += 1
        name = entry.name
        try:
            if entry.is_symlink():
                stats.symlinks += 1
                return None
            if self.dirent_inodes and entry.is_file(follow_symlinks=False):
                current = get_label(name)
                if current != self.target:  # a journal that takes no more stops the run
                    self.journal_and_queue(dfd, rel, name, (self.root_dev, entry.inode()), current)
                return None
            st = entry.stat(follow_symlinks=False)
            mode = st.st_mode
            if S_ISREG(mode):
                if st.st_nlink > 1:
                    stats.hardlinks += 1
                    return None
            elif not S_ISDIR(mode):
                if S_ISLNK(mode):  # swapped for a symlink since the scan read its type
                    stats.symlinks += 1
                else:
                    stats.specials += 1
                return None
            if st.st_dev != self.root_dev or (self.dirent_inodes and st.st_ino != entry.inode()):
                stats.mounts += 1
                return None
            current = get_label(name)
        except JournalFailed:
            raise
        except Exception as exc:  # whatever one entry does, the walk goes on and the run reports it
            stats.error(show(rel + fsencode(name)), exc)
            return None
        ident = (st.st_dev, st.st_ino)
        if current != self.target:
            self.journal_and_queue(dfd, rel, name, ident, current)  # a journal that takes no more stops the run
        return ident if S_ISDIR(mode) else None

    def journal_and_queue(self, dfd: int, rel: bytes, name: str, ident: Ident, current: bytes | None) -> None:
        """Record an entry's original (with the inode it belongs to) and queue its label for after the sync."""
        original = current or b""
        key = b"." if name == "." else rel + fsencode(name)
        self._records.append(b"%s\0%s\0%d:%d\0" % (key, original, ident[0], ident[1]))
        pending = self._pending
        if not pending or pending[-1][0] != self._scan_no:
            pending.append((self._scan_no, os.dup(dfd), rel, []))
        pending[-1][3].append((name, ident, original))
        self._pending_count += 1
        if self._pending_count >= BATCH or len(pending) >= MAX_PENDING_DIRS:
            self.flush()

    def flush(self) -> None:
        """Journal the originals durably, then write the labels."""
        if self._records:
            try:
                write_fully(self.journal_fd, self._header + b"".join(self._records))
                os.fdatasync(self.journal_fd)
            except OSError as exc:  # after a torn record nothing more may be appended: the run ends here
                raise JournalFailed(exc.errno, f"journal: {exc.strerror}") from exc
            self._header = b""
            self._records.clear()
        cwd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            # In /proc/self/fd while labeling: "N" names descriptor N's inode in a one-component lookup
            # (the full /proc/self/fd/N costs four, `self` a magic link among them, twice per entry).
            os.chdir(PROC_FDS)
            for _scan, dfd, rel, items in self._pending:
                for name, ident, original in items:
                    self._label(dfd, rel, name, ident, original)
            os.fchdir(cwd)
        finally:
            for _scan, dfd, _rel, _items in self._pending:
                os.close(dfd)
            os.close(cwd)
            self._pending.clear()
            self._pending_count = 0

    def _label(self, dfd: int, rel: bytes, name: str, ident: Ident, original: bytes) -> None:
        """Label the inode the scan saw under this name in dfd, through a descriptor of it (cwd: PROC_FDS).
        Five system calls: open, fstat, getxattr, setxattr, close (the floor for a pinned, re-checked write)."""
        try:
            fd = os.open(name, _PATH_FLAGS, dir_fd=dfd)
        except FileNotFoundError:
            self.stats.raced += 1
            return
        except Exception as exc:
            self.stats.error(show(rel + fsencode(name)), exc)
            return
        try:
            st = os.fstat(fd)
            proc = str(fd)  # in PROC_FDS
            if (st.st_dev, st.st_ino) != ident:
                if mount_id(fd) != mount_id(dfd):  # a file mounted over this name (the scan saw its dirent)
                    self.stats.mounts += 1
                else:
                    self.stats.raced += 1  # swapped since its original was journaled
                return
            if not labelable(st, self.root_dev):
                if S_ISREG(st.st_mode) and st.st_nlink > 1:  # seen now when the scan took no lstat
                    self.stats.hardlinks += 1
                else:
                    self.stats.raced += 1
                return
            if _label_or_empty(proc) != original:
                self.stats.raced += 1  # relabeled since its original was journaled
                return
            os.setxattr(proc, XATTR, self.target)
            self.stats.changed += 1
        except Exception as exc:
            self.stats.error(show(rel + fsencode(name)), exc)
        finally:
            os.close(fd)

    def walk(self, dfd: int, only: set[str] | None = None) -> None:
        """Label everything below dfd (not dfd itself). only: restrict to these top-level names."""
        def visit(dfd: int, rel: bytes) -> list[tuple[str, Ident]]:
            self._scan_no += 1
            subdirs: list[tuple[str, Ident]] = []
            with os.scandir(dfd) as it:
                for entry in it:
                    if rel == b"" and only is not None and entry.name not in only:
                        continue
                    ident = self.visit_entry(dfd, rel, entry)
                    if ident is not None:
                        subdirs.append((entry.name, ident))
            return subdirs

        walk_tree(dfd, visit, self.stats, moved_is_error=False)

    def close(self) -> None:
        self.flush()
        os.close(self.journal_fd)


def label_tree(rfd: int, target: bytes, journal_prefix: Path, workers: int, run: int | None = None) -> Summary:
    started = time.monotonic()
    journal_prefix.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    root_st = os.fstat(rfd)
    run = run or next_run(journal_prefix)
    # The root itself first (parent process, journaled like any entry).
    os.fchdir(rfd)
    root_labeler = Labeler(target, _journal(journal_prefix, run, "root"), root_st.st_dev)
    current = get_label(".")
    if current != target:  # scan number 0: the root itself
        root_labeler.journal_and_queue(rfd, b"", ".", (root_st.st_dev, root_st.st_ino), current)
    root_labeler.close()
    names = sorted(os.listdir(rfd))
    shares = [set(names[i::workers]) for i in range(workers)] if workers > 1 else [set(names)]
    stats = Stats()
    stats.add(root_labeler.stats.as_dict())
    workers_started = [_fork_worker(rfd, share, target, _journal(journal_prefix, run, str(index)), root_st.st_dev)
                       for index, share in enumerate(shares) if share]
    progress_total(rfd)  # while the workers label (this process only waits for them)
    for pid, read_end in workers_started:
        data = b""
        while chunk := os.read(read_end, 65536):
            data += chunk
        os.close(read_end)
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) != 0 or not data:
            stats.errors += 1
            stats.first_error = stats.first_error or f"worker {pid} failed"
        else:
            stats.add(json.loads(data))
    result = stats.as_dict()
    result["seconds"] = round(time.monotonic() - started, 4)
    return result


def _fork_worker(rfd: int, share: set[str], target: bytes, journal: Path, root_dev: int) -> tuple[int, int]:
    """Fork a worker labeling `share` (top-level names below rfd); (pid, pipe carrying its stats)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        stats = Stats()
        try:
            die_with_parent()
            # Its own open file description: forked processes share a directory fd's read offset.
            own = os.open(".", _DIR_FLAGS, dir_fd=rfd)
            worker = Labeler(target, journal, root_dev)
            stats = worker.stats
            worker.walk(own, share)
            worker.close()
        except BaseException as exc:  # the parent fails the run on it, with this reason
            stats.error(f"worker {os.getpid()}", exc)
        try:
            os.write(write_end, json.dumps(stats.as_dict()).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    return pid, read_end


def _journal(prefix: Path, run: int, worker: str) -> Path:
    return prefix.with_name(f"{prefix.name}.{run:04d}.{worker}")


def journal_run_glob(prefix: Path, run: int) -> str:
    """Glob (in prefix's directory) of one run's journals: its root's and each worker's."""
    return f"{prefix.name}.{run:04d}.*"


def next_run(prefix: Path) -> int:
    runs = [int(p.name.split(".")[-2]) for p in prefix.parent.glob(f"{prefix.name}.*.*")]
    return max(runs, default=0) + 1


def write_fully(fd: int, data: bytes) -> None:
    """Write every byte or raise: a short write (disk full, RLIMIT_FSIZE) is retried, and the error
    that follows it is raised before anything counts on those bytes."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(errno.ENOSPC, "the journal takes no more bytes")
        view = view[written:]


Record = tuple[bytes, Ident | None]  # (original label, b"" = none; the inode it was read from, if known)


def read_journals(prefix: Path, run: int | None = None) -> dict[bytes, Record]:
    """relpath -> its record; oldest run first, first record per path wins. run: that run's journals only."""
    originals: dict[bytes, Record] = {}
    pattern = f"{prefix.name}.*.*" if run is None else journal_run_glob(prefix, run)
    for journal in sorted(prefix.parent.glob(pattern)):
        for path, label, ident in journal_records(journal.read_bytes()):
            originals.setdefault(path, (label, ident))
    return originals


def journal_records(data: bytes) -> Iterator[tuple[bytes, bytes, Ident | None]]:
    """(relpath, original, inode or None in format 1) of every complete record. A record ends with its
    last field's NUL: a torn last record (a crash or a full disk cut it) lacks it and is ignored, as is a
    record whose label is not a context or whose inode does not parse."""
    width = 3 if data.startswith(JOURNAL_HEADER) else 2
    fields = data[len(JOURNAL_HEADER) if width == 3 else 0:].split(b"\0")[:-1]  # after the last NUL: torn
    for i in range(0, len(fields) - width + 1, width):
        path, label = fields[i], fields[i + 1]
        ident = _ident(fields[i + 2]) if width == 3 else None
        if path and (not label or _CONTEXT.fullmatch(label)) and (width == 2 or ident is not None):
            yield path, label, ident


def _ident(text: bytes) -> Ident | None:
    dev, _, ino = text.partition(b":")
    return (int(dev), int(ino)) if dev.isdigit() and ino.isdigit() else None


def restore_tree(rfd: int, root: str, target: bytes, journal_prefix: Path, sweep: bool = False,
                 run: int | None = None) -> Summary:
    """Put every journaled original back (where the entry still carries the target).

    sweep (private trees only): entries carrying the target without a record (created after labeling,
    they inherited the guest's pair) get the policy default, or lose the label: no trace of the freed
    pair may stay behind for its next owner. A shared or read-only target is no guest's secret, and an
    entry carrying it without a record carried it before svirtd came (an admin's virt_content_t ISO):
    such trees get back exactly what was journaled."""
    stats = Stats()
    originals = read_journals(journal_prefix, run)
    root_dev = os.fstat(rfd).st_dev
    lookup = _default_lookup()
    progress_total(rfd, extra=1)  # the root itself is restored too

    def visit(dfd: int, rel: bytes) -> list[tuple[str, Ident]]:
        names = ["."] if rel == b"" else []
        subdirs: list[tuple[str, Ident]] = []
        with os.scandir(dfd) as it:
            for entry in it:
                try:
                    st = entry.stat(follow_symlinks=False)
                except Exception as exc:
                    stats.error(show(rel + os.fsencode(entry.name)), exc)
                    continue
                if stat.S_ISLNK(st.st_mode) or st.st_dev != root_dev:  # never labeled: never restored
                    continue
                names.append(entry.name)
                if stat.S_ISDIR(st.st_mode):
                    subdirs.append((entry.name, (st.st_dev, st.st_ino)))
        for name in names:
            key = b"." if name == "." else rel + os.fsencode(name)
            stats.entries += 1
            try:
                where = root if name == "." else os.fsdecode(os.fsencode(root) + b"/" + key)
                if _restore_entry(name, target, originals.get(key), functools.partial(lookup, where), sweep,
                                  root_dev):
                    stats.changed += 1
            except Exception as exc:  # counted: the caller keeps the pair until every entry is restored
                stats.error(show(key), exc)
        return subdirs

    walk_tree(rfd, visit, stats, moved_is_error=True)
    return stats.as_dict()


def _restore_entry(name: str, target: bytes, record: Record | None, default: Callable[[int], str | None],
                   sweep: bool, root_dev: int) -> bool:
    """Restore one entry (cwd: its directory), through a descriptor of it. False when it is left alone:
    it does not carry the target (never ours, or changed by somebody since), or its record is not about
    this inode (the name was swapped, e.g. for a hard link to a file outside the tree) outside a sweep."""
    if get_label(name) != target:  # by name: the cheap filter, checked again on the descriptor
        return False
    fd = os.open(name, _PATH_FLAGS)
    try:
        st = os.fstat(fd)
        if stat.S_ISLNK(st.st_mode):
            return False
        if record is not None and (record[1] == (st.st_dev, st.st_ino) if record[1] is not None
                                   else labelable(st, root_dev)):
            original = record[0]
        elif sweep:  # it carries the guest's pair with no record of this inode: the policy default, or none
            fallback = default(st.st_mode)
            original = fallback.encode() if fallback else b""
        else:
            return False
        proc = f"/proc/self/fd/{fd}"
        if get_label(proc, follow=True) != target:
            return False
        if original:
            os.setxattr(proc, XATTR, original)
        else:
            os.removexattr(proc, XATTR)
        return True
    finally:
        os.close(fd)


def _default_lookup() -> Callable[[str, int], str | None]:
    """selabel_lookup on the policy's file_contexts, when the bindings are there."""
    try:
        import selinux  # noqa: PLC0415 - only restore needs it; labeling stays stdlib-only

        handle = selinux.selabel_open(selinux.SELABEL_CTX_FILE, None, 0)
    except (ImportError, OSError):
        return lambda _path, _mode: None

    def lookup(path: str, mode: int) -> str | None:
        # The bindings take UTF-8 text only: bytes that are not (a guest's `mv f $'evil\\xff'`) are
        # looked up as U+FFFD; file_contexts patterns are about the directories above such a name.
        text = path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        try:
            rc, context = selinux.selabel_lookup_raw(handle, text, mode)
        except (OSError, TypeError, ValueError):
            return None
        return str(context) if rc == 0 else None

    return lookup


def check_tree(rfd: int, target: bytes) -> Summary:
    """Count entries (only what label_tree labels: directories on the root's filesystem and regular files
    with one link) not carrying the target."""
    stats = Stats()
    root_dev = os.fstat(rfd).st_dev
    dirent_inodes = fs_type(root_dev) in DIRENT_INODE_FS  # a bind mount shows itself: left out, as label does
    os.fchdir(rfd)
    off = 0 if get_label(".") == target else 1

    def visit(dfd: int, rel: bytes) -> list[tuple[str, Ident]]:
        nonlocal off
        subdirs: list[tuple[str, Ident]] = []
        with os.scandir(dfd) as it:
            for entry in it:
                try:
                    st = entry.stat(follow_symlinks=False)
                    if not labelable(st, root_dev) or (dirent_inodes and st.st_ino != entry.inode()):
                        continue
                    stats.entries += 1
                    if get_label(entry.name) != target:
                        off += 1
                except Exception as exc:
                    stats.error(show(rel + os.fsencode(entry.name)), exc)
                    continue
                if stat.S_ISDIR(st.st_mode):
                    subdirs.append((entry.name, (st.st_dev, st.st_ino)))
        return subdirs

    walk_tree(rfd, visit, stats, moved_is_error=True)
    result = stats.as_dict()
    result["off_target"] = off
    return result


# -- progress, for a daemon showing a long walk (--progress-fd) ------------------------------------


PROGRESS_INTERVAL = 0.1  # seconds between two 'done' lines of one process
COUNT_DEPTH = 32  # directories below this depth are not counted: the total is an estimate anyway


@dataclass
class _Progress:
    fd: int | None = None
    sent: int = 0  # entries of the current walk's Stats already reported
    at: float = 0.0
    stats: int = 0  # id() of the Stats those belong to


_progress = _Progress()


def _progress_write(line: str) -> None:
    """One line, written whole (shorter than PIPE_BUF: the workers' lines never interleave)."""
    if _progress.fd is None:
        return
    try:
        os.write(_progress.fd, line.encode())
    except OSError:  # nobody reads any more: the walk itself goes on
        _progress.fd = None


def progress_tick(stats: Stats, final: bool = False) -> None:
    """Report the entries this process walked since its last report; called per directory, throttled."""
    if _progress.fd is None:
        return
    if _progress.stats != id(stats):
        _progress.stats, _progress.sent = id(stats), 0
    now = time.monotonic()
    if stats.entries == _progress.sent or (not final and now - _progress.at < PROGRESS_INTERVAL):
        return
    delta, _progress.sent, _progress.at = stats.entries - _progress.sent, stats.entries, now
    _progress_write(f"done {delta}\n")


def progress_total(rfd: int, extra: int = 0) -> None:
    if _progress.fd is not None:
        _progress_write(f"total {count_entries(rfd) + extra}\n")


def count_entries(rfd: int) -> int:
    """The entries a walk below rfd will scan: names only (a stat for directories alone, to stay on rfd's
    filesystem as the walk does), each directory opened by its bare name with O_NOFOLLOW. Holds one fd
    per level (COUNT_DEPTH at most); an entry that vanishes or fails is simply not counted."""
    root_dev = os.fstat(rfd).st_dev

    def scan(fd: int, depth: int) -> int:
        found, subdirs = 0, []
        with os.scandir(fd) as it:
            for entry in it:
                found += 1
                try:
                    if depth < COUNT_DEPTH and entry.is_dir(follow_symlinks=False) \
                            and entry.stat(follow_symlinks=False).st_dev == root_dev:
                        subdirs.append(entry.name)
                except OSError:
                    continue
        for name in subdirs:
            try:
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError:
                continue
            try:
                found += scan(child, depth + 1)
            except OSError:
                pass
            finally:
                os.close(child)
        return found

    try:
        own = os.open(".", _DIR_FLAGS, dir_fd=rfd)  # its own read offset: rfd's is the walk's
    except OSError:
        return 0
    try:
        return scan(own, 0)
    except OSError:
        return 0
    finally:
        os.close(own)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="svirtd-treewalk")
    p.add_argument("action", choices=["label", "restore", "check"])
    p.add_argument("--root", required=True)
    p.add_argument("--target", required=True)
    p.add_argument("--journal", type=Path)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--root-fd", type=int, help="an inherited fd (O_PATH will do) of the root svirtd checked: "
                   "worked on instead of opening --root, which then only names it")
    p.add_argument("--inode", help="DEV:INO the root must be (what svirtd checked); anything else is refused")
    p.add_argument("--run", type=int, help="label: the journal run to write; restore: the only run to read")
    p.add_argument("--sweep", action="store_true",
                   help="restore: entries carrying the target without a record lose it (private trees)")
    p.add_argument("--progress-fd", type=int, help="an inherited fd (a pipe) to write progress lines to: "
                   "'total N' (entries counted), 'done N' (N more walked), at most 10 a second per process")
    args = p.parse_args(argv)
    die_with_parent()
    _progress.fd = args.progress_fd
    target = args.target.encode()
    try:
        rfd = checked_root(args.root, args.root_fd, args.inode)
        if rfd < 0:
            print(json.dumps({"fatal": f"{args.root} is no longer the directory svirtd checked"}))
            return 1
        if args.action == "label":
            result = label_tree(rfd, target, args.journal, max(1, min(args.workers, 16)), args.run)
        elif args.action == "restore":
            result = restore_tree(rfd, args.root, target, args.journal, args.sweep, args.run)
        else:
            result = check_tree(rfd, target)
        os.close(rfd)
    except OSError as exc:
        print(json.dumps({"fatal": f"{exc.filename or args.root}: {exc.strerror}"}))
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
