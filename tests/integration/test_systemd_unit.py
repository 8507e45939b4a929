"""Issue 13 (14) and issue 12: what systemd does with /run/svirtd, and ordering against libvirt.

There is no systemd as PID 1 here: starting and stopping the unit cannot be run. What can be: the
unit file as systemd parses it (`systemd-analyze verify`), and the settings that decide it, read
from the file. That /run/svirtd survives a stop is systemd's documented behaviour of
RuntimeDirectoryPreserve=yes; that svirtd leaves hook.env when it stops and that the hook then
enforces require_confined is shown with real processes in test_confinement.py.
"""

from __future__ import annotations

import posixpath
import re
import subprocess
import sys
from pathlib import Path

import pytest

from svirtd.config import Config

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "svirtd.service"
LIBVIRTS = ("libvirtd.service", "virtqemud.service")


def settings(unit: Path) -> dict[str, list[str]]:
    """Every Key=value of the unit, values of repeated keys in order (systemd allows repeats)."""
    out: dict[str, list[str]] = {}
    for raw in unit.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, value = line.split("=", 1)
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def words(unit: dict[str, list[str]], key: str) -> list[str]:
    return [w for value in unit.get(key, []) for w in value.split()]


def test_run_svirtd_is_kept_when_svirtd_stops_and_holds_what_the_hook_reads() -> None:
    unit = settings(UNIT)
    assert unit.get("RuntimeDirectoryPreserve") == ["yes"]  # not "restart": kept across a plain stop too
    runtime = {f"/run/{d}" for d in words(unit, "RuntimeDirectory")}
    # Where the installed hook looks (Makefile's sed) and svirtd writes (its default config) ...
    install = re.search(r"@HOOK_ENV@\|([^|]+)\|", (REPO / "Makefile").read_text())
    assert install is not None
    hook_env = install.group(1)
    assert hook_env == Config().hook_env_file
    # ... hook.env and the hook's markers (${HOOK_ENV%/*}/unconfined) lie in the kept directories.
    assert posixpath.dirname(hook_env) in runtime
    assert '${HOOK_ENV%/*}/unconfined' in (REPO / "data" / "libvirt" / "svirtd-hook.sh").read_text()
    assert posixpath.join(posixpath.dirname(hook_env), "unconfined") in runtime


def test_ordered_before_either_libvirt_and_pulls_in_neither() -> None:
    unit = settings(UNIT)
    for key in ("Wants", "Requires", "Requisite", "BindsTo", "PartOf", "Upholds", "After"):
        assert not set(words(unit, key)) & set(LIBVIRTS), f"{key}= names libvirt"
    assert set(LIBVIRTS) <= set(words(unit, "Before"))


def test_unit_verifies_with_systemd_analyze(tmp_path: Path) -> None:
    svirtd = Path(sys.executable).parent / "svirtd"
    text = UNIT.read_text().replace("ExecStart=/usr/sbin/svirtd", f"ExecStart={svirtd}")
    (tmp_path / "svirtd.service").write_text(text)
    (tmp_path / "svirtd-audit.socket").write_text((REPO / "systemd" / "svirtd-audit.socket").read_text())
    out = subprocess.run(["systemd-analyze", "verify", "--man=no", str(tmp_path / "svirtd.service"),
                          str(tmp_path / "svirtd-audit.socket")], capture_output=True, text=True)
    assert out.returncode == 0 and not out.stderr.strip(), out.stderr


SOCKET = REPO / "systemd" / "svirtd-audit.socket"


def test_notify_unit_with_watchdog_reload_and_no_restart_loop_on_config_errors() -> None:
    """What systemd does with these settings is exercised under real systemd in the e2e run
    (RESULT systemd_ready_after_reconcile, systemctl_reload, watchdog, status_line); here: that the
    unit asks for it, and that it names the exit status svirtd really uses for a config error."""
    from svirtd.service import EX_CONFIG

    unit = settings(UNIT)
    assert unit["Type"] == ["notify"] and unit["NotifyAccess"] == ["main"]
    assert unit["BusName"] == ["org.svirt.Manager"]
    assert unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert unit["RestartPreventExitStatus"] == [str(EX_CONFIG)]
    assert unit["Restart"] == ["on-failure"]
    assert int(unit["WatchdogSec"][0].removesuffix("s")) > 0


def test_the_audit_socket_lives_and_dies_with_svirtd() -> None:
    """A stopped svirtd stays stopped under audit traffic: the socket is stopped with it, also when svirtd
    fails for good (BindsTo=; PartOf= would pass on stops only), and not started on its own ([Install]
    would put it in sockets.target); only where audit exists."""
    sock = settings(SOCKET)
    assert sock["BindsTo"] == ["svirtd.service"]
    assert not any(line.strip() == "[Install]" for line in SOCKET.read_text().splitlines())
    assert sock["ConditionSecurity"] == ["audit"] and sock["ConditionCapability"] == ["CAP_AUDIT_READ"]
    assert "svirtd-audit.socket" in words(settings(UNIT), "Wants")
