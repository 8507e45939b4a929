"""Human-readable levels (seed 4.7): `s0:cA,cB=<guest name>` lines for mcstrans.

`ls -Z` and `ps -Z` then show `web01` instead of `s0:c12,c345`. svirtd owns one translation file
(included from setrans.conf with an `Include=` line); every change to the table rewrites it
atomically, batched: a burst of isolations is one write, not one semanage transaction per guest
(seed 4.10). mcstrans 3.4 loses all translations on SIGHUP, so it is restarted instead, and only when
it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from .models import Assignment
from .to_the_end import to_the_end

Rows = Callable[[], Iterable[tuple[str, str, str]]]

log = logging.getLogger(__name__)

# What mcstrans accepts as a translation: no whitespace, '=' or control characters.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}$")


def render_translations(rows: Iterable[tuple[str, str, str]]) -> str:
    """rows: (level, name, uuid). One line per guest; the UUID stands in for an unusable name."""
    lines = ["# Written by svirtd: one line per isolated guest. Do not edit; it is rewritten on every change."]
    for level, name, uuid in sorted(rows):
        lines.append(f"{level}={name if _SAFE_NAME.match(name) else uuid}")
    return "\n".join(lines) + "\n"


def write_atomically(path: Path, text: str) -> None:
    """tmp file in the same directory, fsync, rename: readers see the old or the new file, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mcstrans runs as root but in its own domain; the content is not secret
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


MCSTRANS_SOCKET = Path("/run/setrans/.setrans-unix")


def mcstrans_running() -> bool:
    """By its socket (not by scanning processes, which a confined daemon has no business doing)."""
    try:
        return MCSTRANS_SOCKET.exists()
    except OSError:
        return False


def restart_mcstrans() -> None:
    if shutil.which("systemctl") and Path("/run/systemd/system").is_dir():
        subprocess.run(["systemctl", "try-restart", "mcstrans.service"], capture_output=True)


class TranslationFile:
    """Keeps the file in step with the table (a manager Listener: every change schedules a rewrite)."""

    def __init__(self, path: Path, rows: Rows, delay: float = 0.2) -> None:
        self.path = path
        self._rows = rows
        self._delay = delay
        self._pending: asyncio.Task[None] | None = None
        self.writes = 0

    def isolated(self, assignment: Assignment) -> None:
        self.changed()

    def released(self, uuid: str, name: str) -> None:
        self.changed()

    def changed(self) -> None:
        if self._pending is None or self._pending.done():
            self._pending = asyncio.get_running_loop().create_task(self._write_later())

    async def _write_later(self) -> None:
        await asyncio.sleep(self._delay)  # batch a burst of changes into one write
        # The rows are read on the loop (the store's connection); the file's I/O (a read, an fsync, maybe
        # mcstrans's restart) in a thread: during a burst of defines it held the loop up to 80 ms a time.
        rows = list(self._rows())
        await to_the_end(asyncio.ensure_future(asyncio.to_thread(self._write, rows)))

    def write_now(self) -> None:
        self._write(self._rows())

    def _write(self, rows: Iterable[tuple[str, str, str]]) -> None:
        text = render_translations(rows)
        try:
            if self.path.exists() and self.path.read_text() == text:
                return
            write_atomically(self.path, text)
        except OSError as exc:
            log.warning("cannot write MCS translations to %s: %s", self.path, exc)
            return
        self.writes += 1
        log.info("MCS translations written: %d guests in %s", text.count("\n") - 1, self.path)
        if mcstrans_running():
            restart_mcstrans()

    async def flush(self) -> None:
        if self._pending is not None and not self._pending.done():
            self._pending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pending  # a write under way in its thread ends first: this one must come last
            self.write_now()
