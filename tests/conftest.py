"""Shared fixtures. Integration fixtures stand up the REAL parts (see testbed/) and own them: a private
dbus-daemon, a private libvirtd in its own mount namespace (never the host's), svirtd subprocesses.
Everything a test starts is stopped by its fixture, pass or fail."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from testbed.bus import PrivateBus
from testbed.daemon import SvirtdProcess
from testbed.guests import GuestFactory
from testbed.libvirtd import Libvirtd
from testbed.mounts import Mounts

# Unique per run: names of guests, image directories and helpers never match another run's.
RUN_PREFIX = f"svt{secrets.token_hex(2)}"


def wait_until(check: Callable[[], object], timeout: float = 30.0, interval: float = 0.02,
               what: str = "condition") -> object:
    """Poll until check() returns something truthy; its value, or AssertionError after timeout.

    The timeout is a generous bound for a loaded 2-core machine, not a performance claim: tests wait
    for the event they need and report timings instead of asserting them (benches assert ratios)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


@pytest.fixture(scope="session")
def as_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("integration tests need root (real xattrs, libvirtd, dbus-daemon); run `make test` as root")


@pytest.fixture(scope="session")
def bus(as_root: None) -> Iterator[PrivateBus]:
    # Not under pytest's 0700 tmp dir: unprivileged callers (uid 65534) must reach the socket.
    workdir = Path(tempfile.mkdtemp(prefix=f"{RUN_PREFIX}-bus-"))
    b = PrivateBus(workdir).start()
    try:
        yield b
    finally:
        b.stop()
        errors = b.stderr_text()  # read before the directory holding it goes
        shutil.rmtree(workdir)
    # A policy file dbus-daemon could not parse leaves the bus running without our rules.
    assert "Encountered error" not in errors, errors


@pytest.fixture(scope="session")
def libvirtd(as_root: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Libvirtd]:
    daemon = Libvirtd(tmp_path_factory.mktemp("libvirtd")).start()
    yield daemon
    daemon.stop()


@pytest.fixture
def guests(libvirtd: Libvirtd) -> Iterator[GuestFactory]:
    libvirtd.ensure_running()
    factory = GuestFactory(prefix=f"{RUN_PREFIX}-{secrets.token_hex(3)}", uri=libvirtd.uri)
    yield factory
    libvirtd.ensure_running()
    factory.cleanup()


@pytest.fixture
def mounts(guests: GuestFactory) -> Iterator[Mounts]:
    """Mounts of one test. Set up after `guests` and before `svirtd` (which depends on it), so they are
    undone after svirtd stopped and before the guests' image directory is removed."""
    m = Mounts()
    yield m
    problems = m.teardown()
    assert not problems, problems


def clear_hook_env(libvirtd: Libvirtd) -> None:
    """Between tests no svirtd is there: the hook then starts guests unconfined, as on a host without svirtd."""
    libvirtd.hook_env.unlink(missing_ok=True)
    markers = libvirtd.hook_env.parent / "unconfined"
    if markers.is_dir():
        for marker in markers.iterdir():
            marker.unlink(missing_ok=True)


@pytest.fixture
def svirtd(bus: PrivateBus, libvirtd: Libvirtd, guests: GuestFactory, tmp_path: Path,
           mounts: Mounts) -> Iterator[Callable[..., SvirtdProcess]]:
    """Start svirtd (a real subprocess) confining this test's guests only; stopped after the test."""
    started: list[SvirtdProcess] = []

    def start(**config: object) -> SvirtdProcess:
        config.setdefault("auto_confine_names", [f"{guests.prefix}-*"])
        proc = SvirtdProcess(tmp_path / "svirtd", bus.address, libvirtd.uri, libvirtd.hook_env, **config)
        proc.start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()
    clear_hook_env(libvirtd)
