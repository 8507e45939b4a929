"""Mounts a test makes (FUSE through bindfs, ramfs, tmpfs, loop devices, ext4 on a loop device), owned
and always undone.

A FUSE daemon stopped to play a dead NFS server, or a mount left behind, poisons every later run: the
mount point cannot be removed, its daemon stays, and `rm -r` of the image directory walks into it.
So every mount is registered here, and teardown (a fixture's, after svirtd has stopped) resumes
stopped daemons, detaches each mount lazily (`fusermount -uz` / `umount -l`), ends its daemon and then
checks with findmnt that the mount point is really gone.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .process import stop_process


@dataclass
class _Mount:
    target: Path
    fuse: bool
    daemon: subprocess.Popen[bytes] | None = None
    loop: str | None = None


def mounted(target: Path) -> bool:
    return subprocess.run(["findmnt", "--mountpoint", str(target)], capture_output=True).returncode == 0


class Mounts:
    def __init__(self) -> None:
        self._mounts: list[_Mount] = []

    def bindfs(self, source: Path, target: Path, *options: str) -> subprocess.Popen[bytes]:
        """A FUSE view of source at target (bindfs in the foreground: its pid is ours, no pgrep).
        Pass "--xattr-none" for storage that cannot carry labels, as NFS without security labels."""
        return self._fuse(["bindfs", "-f", *options, str(source), str(target)], source, target)

    def eiofs(self, source: Path, target: Path, control: Path, writable: bool = False) -> subprocess.Popen[bytes]:
        """A FUSE view of source at target whose operations listed in control fail with EIO
        (testbed/eiofs.py: storage returning I/O errors); writable to back a loop device."""
        return self._fuse([sys.executable, "-m", "testbed.eiofs", str(source), str(target), str(control),
                           *(["--rw"] if writable else [])], source, target)

    def _fuse(self, cmd: list[str], source: Path, target: Path) -> subprocess.Popen[bytes]:
        """A FUSE daemon in the foreground (its pid is ours, no pgrep), registered before it mounts."""
        source.mkdir(parents=True, exist_ok=True)
        target.mkdir(parents=True, exist_ok=True)
        daemon = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  cwd=Path(__file__).resolve().parent.parent)
        self._mounts.append(_Mount(target, fuse=True, daemon=daemon))
        deadline = time.monotonic() + 10
        while not mounted(target):
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{cmd[0]} did not mount {target}: "
                                   f"{daemon.stderr.read().decode() if daemon.stderr else ''}")
            time.sleep(0.01)
        return daemon

    def fs(self, fstype: str, target: Path, options: str = "") -> None:
        """A ramfs or tmpfs at target (options: e.g. "size=1m" for a small one that fills up)."""
        target.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", fstype, *(["-o", options] if options else []), "none", str(target)],
                       check=True)
        self._mounts.append(_Mount(target, fuse=False))

    def bind(self, source: Path, target: Path) -> None:
        """A bind mount of an existing file or directory over an existing one of the same kind."""
        subprocess.run(["mount", "--bind", str(source), str(target)], check=True)
        self._mounts.append(_Mount(target, fuse=False))

    def bind_read_only(self, source: Path, target: Path) -> None:
        """A read-only bind mount of a writable directory: what systemd's ProtectSystem= sandbox shows
        svirtd of a directory its unit does not list in ReadWritePaths=."""
        source.mkdir(parents=True, exist_ok=True)
        target.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "--bind", str(source), str(target)], check=True)
        self._mounts.append(_Mount(target, fuse=False))
        subprocess.run(["mount", "-o", "remount,bind,ro", str(target)], check=True)

    def loop_device(self, backing: Path, size: int = 1024 * 1024) -> str:
        """A loop block device over a new file (not mounted anywhere)."""
        backing.write_bytes(b"\0" * size)
        dev = subprocess.run(["losetup", "-f", "--show", str(backing)], capture_output=True, text=True,
                             check=True).stdout.strip()
        self._mounts.append(_Mount(backing, fuse=False, loop=dev))
        return dev

    def mounted_block_device(self, backing: Path, target: Path, size: int = 8 * 1024 * 1024) -> str:
        """A loop block device with an ext4 filesystem on it, mounted at target: one of "the host's
        mounted block devices", whatever / is on. Unmounted, then detached, at teardown."""
        dev = self.loop_device(backing, size)
        subprocess.run(["mkfs.ext4", "-q", "-F", dev], capture_output=True, check=True)
        target.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "ext4", dev, str(target)], capture_output=True, check=True)
        self._mounts.append(_Mount(target, fuse=False))
        return dev

    def ext4_on_failing_disk(self, work: Path, target: Path, control: Path, size: int = 32 * 1024 * 1024) -> str:
        """ext4 (mounted sync, so a label write waits for its journal commit) on a loop device whose
        backing file sits on eiofs: once control says "write /disk.ext4", every write to that disk fails
        with EIO and ext4 reports it, then turns read-only, as a dying disk does. The loop device, the
        ext4 mount and the FUSE mount are all undone at teardown."""
        source, fuse = work / "disk-src", work / "disk"
        source.mkdir(parents=True, exist_ok=True)
        with (source / "disk.ext4").open("wb") as f:
            f.truncate(size)
        subprocess.run(["mkfs.ext4", "-q", "-F", str(source / "disk.ext4")], capture_output=True, check=True)
        self.eiofs(source, fuse, control, writable=True)
        dev = subprocess.run(["losetup", "-f", "--show", str(fuse / "disk.ext4")], capture_output=True, text=True,
                             check=True).stdout.strip()
        self._mounts.append(_Mount(fuse / "disk.ext4", fuse=False, loop=dev))
        target.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "ext4", "-o", "sync", dev, str(target)], capture_output=True, check=True)
        self._mounts.append(_Mount(target, fuse=False))
        return dev

    def teardown(self) -> list[str]:
        """Undo everything, newest first; what could not be undone (the caller fails the test on it)."""
        problems: list[str] = []
        for m in reversed(self._mounts):
            if m.loop is not None:
                if subprocess.run(["losetup", "-d", m.loop], capture_output=True).returncode != 0:
                    problems.append(f"loop device {m.loop} could not be detached")
                continue
            if m.daemon is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(m.daemon.pid, signal.SIGCONT)  # a stopped daemon cannot let go
            if mounted(m.target):
                cmd = ["fusermount", "-uz", str(m.target)] if m.fuse else ["umount", "-l", str(m.target)]
                subprocess.run(cmd, capture_output=True)
            stop_process(m.daemon, 10)
            if mounted(m.target):
                problems.append(f"{m.target} is still mounted")
        self._mounts.clear()
        return problems
