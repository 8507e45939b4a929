"""Shared fixtures. Integration fixtures stand up the REAL parts; see testbed/."""

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
from testbed.guests import GuestFactory, remove_domains
from testbed.hook import clear_hook_env, install_hook, remove_hook
from testbed.libvirtd import Libvirtd, answers

TEST_PREFIX = "svt-"


def wait_until(check: Callable[[], object], timeout: float = 5.0, interval: float = 0.02,
               what: str = "condition") -> object:
    """Poll until check() returns something truthy; its value, or AssertionError after timeout."""
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
    workdir = Path(tempfile.mkdtemp(prefix="svirtd-test-bus-"))
    b = PrivateBus(workdir).start()
    yield b
    b.stop()
    shutil.rmtree(workdir, ignore_errors=True)
    assert "Encountered error" not in b.stderr_text()


@pytest.fixture(scope="session")
def libvirtd(as_root: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Libvirtd]:
    # The hook first: libvirtd only discovers hooks when it starts.
    fresh_hook = install_hook()
    clear_hook_env()
    daemon = Libvirtd(tmp_path_factory.mktemp("libvirtd"))
    if fresh_hook and answers():
        daemon.restart_libvirtd()
    daemon.ensure()
    remove_domains("qemu:///system", lambda name: name.startswith(TEST_PREFIX))  # leftovers of a crashed run
    yield daemon
    remove_domains("qemu:///system", lambda name: name.startswith(TEST_PREFIX))
    daemon.stop()
    remove_hook()


@pytest.fixture
def guests(libvirtd: Libvirtd) -> Iterator[GuestFactory]:
    factory = GuestFactory(prefix=f"{TEST_PREFIX}{secrets.token_hex(3)}")
    yield factory
    factory.cleanup()


@pytest.fixture
def svirtd(bus: PrivateBus, guests: GuestFactory, tmp_path: Path) -> Iterator[Callable[..., SvirtdProcess]]:
    """Start svirtd (a real subprocess) confining this test's guests only; stopped after the test."""
    started: list[SvirtdProcess] = []

    def start(**config: object) -> SvirtdProcess:
        config.setdefault("auto_confine_names", [f"{guests.prefix}-*"])
        proc = SvirtdProcess(tmp_path / "svirtd", bus.address, **config)
        proc.start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()
    clear_hook_env()
