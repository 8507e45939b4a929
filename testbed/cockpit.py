"""Cockpit for tests and screenshots: the real cockpit-ws serving the repo's cockpit/ package over a
local session whose bridge talks to the private bus, and a headless Chromium driven by chromedriver.

Both run in their own process groups and are stopped as groups (and Chromium's crashpad handlers,
which leave the group, by the profile directory they name), so no cockpit-bridge, renderer, zygote or
crash handler outlives them, pass or fail."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from selenium import webdriver
from selenium.webdriver.remote.webdriver import WebDriver

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "cockpit"
COCKPIT_WS = Path("/usr/lib/cockpit/cockpit-ws")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM = Path("/usr/bin/chromium")


def js(driver: WebDriver, script: str, *args: Any) -> Any:
    """Run script in the page and return its value (selenium 4.8 leaves execute_script unannotated)."""
    return driver.execute_script(script, *args)  # type: ignore[no-untyped-call]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_http(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:  # noqa: S310 (a local http URL we built)
                if reply.status == 200:
                    return
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.05)


def stop_group(proc: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> None:
    """SIGTERM the process group proc leads (it was started with start_new_session), then SIGKILL."""
    if proc is None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            continue
        # The leader is gone; children that ignored SIGTERM still hold the group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        return


def kill_strays(marker: Path) -> None:
    """SIGKILL every process whose command line names marker (a directory unique to this run):
    Chromium's crashpad handlers leave the process group (setsid) and would outlive a killed browser."""
    needle = str(marker).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)


@contextlib.contextmanager
def cockpit_ws(logdir: Path, bus_address: str, uid: int | None = None) -> Iterator[str]:
    """cockpit-ws with a local session (no login, no TLS, no systemd) on a free port of 127.0.0.1;
    yields the URL of the svirt page. The bridge runs as the user cockpit-ws runs as: root, or uid
    (a user without any privilege, as somebody logged in to Cockpit without administrative access).
    It finds the package through XDG_DATA_DIRS (a symlink to the repo's cockpit/, next to the
    system's base1 and static) and the bus through DBUS_SYSTEM_BUS_ADDRESS."""
    logdir.mkdir(parents=True, exist_ok=True)
    # Not under pytest's 0700 tmp dir: a bridge running as uid must read the package through it.
    work = Path(tempfile.mkdtemp(prefix="svirtd-cockpit-"))
    work.chmod(0o755)
    (work / "share" / "cockpit").mkdir(parents=True)
    (work / "share" / "cockpit" / "svirt").symlink_to(PACKAGE)
    (work / "config").mkdir()  # no host /etc/cockpit/cockpit.conf: its origins or banner must not matter
    runtime = work / "runtime"
    runtime.mkdir(mode=0o700)
    if uid is not None:
        os.chown(runtime, uid, uid)
    port = free_port()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(runtime),
        "LANG": "C.UTF-8",
        "XDG_DATA_DIRS": f"{work / 'share'}:/usr/share",
        "XDG_CONFIG_DIRS": str(work / "config"),
        "XDG_RUNTIME_DIR": str(runtime),
        "DBUS_SYSTEM_BUS_ADDRESS": bus_address,
        # No session bus: the bridge must not autolaunch one (it would outlive the test).
        "DBUS_SESSION_BUS_ADDRESS": f"unix:path={runtime}/no-session-bus",
    }
    as_user = [] if uid is None else ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
    log = (logdir / "cockpit-ws.log").open("ab")
    proc = subprocess.Popen([*as_user, str(COCKPIT_WS), "--local-session=cockpit-bridge", "--no-tls",
                             "--port", str(port), "--address", "127.0.0.1"],
                            env=env, stdout=log, stderr=log, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}/cockpit/@localhost/svirt/index.html"
        wait_http(url)
        yield url
    finally:
        stop_group(proc)
        log.close()
        shutil.rmtree(work, ignore_errors=True)


@contextlib.contextmanager
def chromium(workdir: Path, width: int = 1100, height: int = 700) -> Iterator[WebDriver]:
    """Headless Chromium behind our own chromedriver process (its group holds every browser process).
    workdir keeps chromedriver's log; the profile and TMPDIR go to a short directory of their own, as
    Chromium refuses a singleton socket path longer than a sockaddr_un (pytest's tmp_path often is)."""
    workdir.mkdir(parents=True, exist_ok=True)
    profile = Path(tempfile.mkdtemp(prefix="svirtd-chromium-"))
    port = free_port()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(profile), "LANG": "C.UTF-8",
           "TMPDIR": str(profile)}
    log = (workdir / "chromedriver.log").open("ab")
    driver_proc = subprocess.Popen([str(CHROMEDRIVER), f"--port={port}"], env=env, stdout=log, stderr=log,
                                   start_new_session=True)
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox",  # root has no usable sandbox here
                "--disable-gpu", "--disable-dev-shm-usage", f"--user-data-dir={profile / 'profile'}",
                f"--window-size={width},{height}", "--no-first-run", "--disable-extensions",
                # Nothing but the local cockpit-ws: no update checks, sync, or safe-browsing lookups.
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-default-apps", "--mute-audio", "--lang=en-US", "--disable-breakpad"):
        options.add_argument(arg)  # type: ignore[no-untyped-call]  # selenium 4.8 leaves it unannotated
    driver: WebDriver | None = None
    try:
        wait_http(f"http://127.0.0.1:{port}/status")
        driver = webdriver.Remote(command_executor=f"http://127.0.0.1:{port}", options=options)
        yield driver
    finally:
        if driver is not None:
            with contextlib.suppress(Exception):
                driver.quit()
        stop_group(driver_proc)
        kill_strays(profile)
        log.close()
        shutil.rmtree(profile, ignore_errors=True)
