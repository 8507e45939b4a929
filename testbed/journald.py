"""A real systemd-journald of its own, on a host whose PID 1 is not systemd.

journald runs in a private mount namespace in which /run/systemd/journal (its sockets) and /run/log
(its runtime journal files) are directories of the test. A process wrapped with wrap() sees the same
sockets, so its sd_journal_send() (systemd.journal.JournalHandler) reaches this journald; the host's
own /run/systemd, /run/log and /var/lib/systemd/catalog are never touched. The files are read with
the real journalctl (-D), and `journalctl -x` is run in a namespace where the catalog database is the
one built here from a catalog file.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from .process import stop_process

JOURNALD = "/lib/systemd/systemd-journald"
# The host's /run/systemd has no journal directory to bind onto: a private tmpfs gets one. Then the
# SRC DST pairs before "--" are bind-mounted, and the command runs.
WRAPPER = """set -e
mount -t tmpfs -o mode=0755 tmpfs /run/systemd
mkdir /run/systemd/journal
while [ "$1" != "--" ]; do mount --bind "$1" "$2"; shift 2; done
shift
exec "$@"
"""


def in_namespace(binds: Sequence[tuple[Path, str]], command: Sequence[str]) -> list[str]:
    """command in a new private mount namespace, with the binds (source, mount point) mounted."""
    pairs = [arg for src, dst in binds for arg in (str(src), dst)]
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", WRAPPER, "sh", *pairs, "--", *command]


class PrivateJournald:
    def __init__(self, workdir: Path) -> None:
        self.sockets = workdir / "run-systemd-journal"  # /run/systemd/journal inside
        self.root = workdir / "root"  # a --root for journalctl: run/log/journal, the catalog
        self.run_log = self.root / "run" / "log"  # /run/log inside
        self.proc: subprocess.Popen[bytes] | None = None
        self._stderr = workdir / "journald.stderr"

    def wrap(self, command: Sequence[str] = ()) -> list[str]:
        """A command line that runs `command` with this journald as its journal."""
        return in_namespace([(self.sockets, "/run/systemd/journal"), (self.run_log, "/run/log")], command)

    def start(self, timeout: float = 10.0) -> PrivateJournald:
        self.sockets.mkdir(parents=True)
        self.run_log.mkdir(parents=True)
        self.proc = subprocess.Popen(self.wrap([JOURNALD]), stdout=subprocess.DEVNULL,
                                     stderr=self._stderr.open("wb"))
        deadline = time.monotonic() + timeout
        while not (self.sockets / "socket").exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"journald did not start: {self._stderr.read_text(errors='replace')}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None

    def entries(self, *matches: str) -> list[dict[str, str]]:
        """The entries matching FIELD=value matches, as journalctl -o json gives them."""
        out = subprocess.run(["journalctl", "-D", str(self.run_log / "journal"), "-o", "json", "--no-pager",
                              *matches], capture_output=True, text=True, check=True, timeout=30)
        return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]

    def install_catalog(self, catalog: Path) -> str:
        """Index the catalog file as a package's would be (/usr/lib/systemd/catalog); --list-catalog."""
        target = self.root / "usr" / "lib" / "systemd" / "catalog"
        target.mkdir(parents=True, exist_ok=True)
        (target / catalog.name).write_bytes(catalog.read_bytes())
        subprocess.run(["journalctl", f"--root={self.root}", "--update-catalog"], check=True, timeout=30)
        return subprocess.run(["journalctl", f"--root={self.root}", "--list-catalog", "--no-pager"],
                              capture_output=True, text=True, check=True, timeout=30).stdout

    def explain(self, *matches: str) -> str:
        """`journalctl -x` of the matching entries. journalctl reads the catalog database from the fixed
        path /var/lib/systemd/catalog (--root does not move it): the one built here is mounted there."""
        command = ["journalctl", "-D", str(self.run_log / "journal"), "-x", "--no-pager", *matches]
        binds = [(self.root / "var" / "lib" / "systemd" / "catalog", "/var/lib/systemd/catalog")]
        return subprocess.run(in_namespace(binds, command), capture_output=True, text=True, check=True,
                              timeout=30).stdout
