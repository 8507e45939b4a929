"""Issue 8: who may do what. Real polkitd on the private bus, real callers with real uids."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from testbed.bus import PrivateBus
from testbed.daemon import SvirtdProcess, call_json
from testbed.guests import Guest, GuestFactory
from testbed.polkit import Polkitd

pytestmark = pytest.mark.integration
StartSvirtd = Callable[..., SvirtdProcess]
REPO = Path(__file__).resolve().parents[2]
NOBODY, DAEMON, BIN = 65534, 1, 2  # nobody (primary group nogroup), daemon, bin


def rules(delegated_guest: str) -> dict[str, str]:
    return {
        "50-svirtd-group.rules": """
polkit.addRule(function(action, subject) {
    if ((action.id == "org.svirt.manager1.isolate" || action.id == "org.svirt.manager1.release") &&
        subject.isInGroup("nogroup")) {
        return polkit.Result.YES;
    }
});""",
        "60-svirtd-delegate.rules": f"""
polkit.addRule(function(action, subject) {{
    if ((action.id == "org.svirt.manager1.isolate" || action.id == "org.svirt.manager1.release") &&
        subject.user == "bin" && action.lookup("guest_name") == "{delegated_guest}") {{
        return polkit.Result.YES;
    }}
}});""",
    }


def dbus_send(bus: PrivateBus, member: str, *args: str, user: int | None = None) -> subprocess.CompletedProcess[str]:
    cmd = ["dbus-send", f"--bus={bus.address}", "--print-reply", "--dest=org.svirt.Manager", "/org/svirt/Manager",
           f"org.svirt.Manager1.{member}", *args]
    if user is not None:
        cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups" if user != NOBODY else
               "--clear-groups", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def isolate(bus: PrivateBus, g: Guest, user: int | None) -> subprocess.CompletedProcess[str]:
    # By name: polkit gets a guest svirtd does not isolate yet only as the caller named it (svirtd asks
    # libvirt nothing before the caller is authorized; see test_authorization_hardening.py).
    return dbus_send(bus, "Isolate", f"string:{g.name}", "string:", user=user)


def release(bus: PrivateBus, g: Guest, user: int | None) -> subprocess.CompletedProcess[str]:
    return dbus_send(bus, "Release", f"string:{g.name}", user=user)


def isolated(bus: PrivateBus) -> set[str]:
    return {row[0] for row in call_json(bus.address, "List")[0]}


@pytest.fixture
def two_guests(guests: GuestFactory) -> tuple[Guest, Guest]:
    return guests.new(), guests.new()


@pytest.fixture
def polkitd(bus: PrivateBus, two_guests: tuple[Guest, Guest], tmp_path: Path) -> Iterator[Polkitd]:
    daemon = Polkitd(tmp_path / "polkit", bus.address, rules(two_guests[0].name)).start()
    yield daemon
    daemon.stop()


def test_group_granted_by_a_rule_may_isolate_others_may_not(bus: PrivateBus, svirtd: StartSvirtd,
                                                           two_guests: tuple[Guest, Guest], polkitd: Polkitd) -> None:
    a, b = two_guests
    svirtd(default_confined=False)
    denied = isolate(bus, a, DAEMON)
    assert denied.returncode != 0
    assert "org.freedesktop.DBus.Error.AccessDenied" in denied.stderr
    assert f"not authorized to isolate {a.name}" in denied.stderr and "polkit" in denied.stderr
    assert isolated(bus) == set()
    ok = isolate(bus, a, NOBODY)  # in group nogroup: granted by 50-svirtd-group.rules
    assert ok.returncode == 0, ok.stderr
    assert isolated(bus) == {a.uuid}
    assert isolate(bus, b, None).returncode == 0  # root
    assert isolated(bus) == {a.uuid, b.uuid}
    assert release(bus, b, DAEMON).returncode != 0
    assert release(bus, b, NOBODY).returncode == 0
    assert isolated(bus) == {a.uuid}


def test_a_guest_delegated_to_one_user(bus: PrivateBus, svirtd: StartSvirtd, two_guests: tuple[Guest, Guest],
                                       polkitd: Polkitd) -> None:
    a, b = two_guests
    svirtd(default_confined=False)
    assert isolate(bus, a, BIN).returncode == 0
    assert release(bus, a, BIN).returncode == 0
    denied = isolate(bus, b, BIN)
    assert denied.returncode != 0 and f"not authorized to isolate {b.name}" in denied.stderr
    assert isolated(bus) == set()
    # Unknown guests reveal nothing to an unauthorized caller: denied, not "no such guest".
    probe = dbus_send(bus, "Isolate", "string:svt-does-not-exist", "string:", user=BIN)
    assert "AccessDenied" in probe.stderr


def test_without_polkit_only_root(bus: PrivateBus, svirtd: StartSvirtd, two_guests: tuple[Guest, Guest],
                                  polkitd: Polkitd) -> None:
    a, _ = two_guests
    svirtd(default_confined=False)
    assert isolate(bus, a, NOBODY).returncode == 0  # polkit running: the group rule applies
    assert release(bus, a, NOBODY).returncode == 0
    polkitd.stop()
    denied = isolate(bus, a, NOBODY)
    assert denied.returncode != 0 and "polkit is not running, so only root may isolate" in denied.stderr
    assert isolate(bus, a, None).returncode == 0
    assert isolated(bus) == {a.uuid}


def test_query_is_open_to_everyone_under_polkit(bus: PrivateBus, svirtd: StartSvirtd, two_guests: tuple[Guest, Guest],
                                                polkitd: Polkitd) -> None:
    a, _ = two_guests
    svirtd()
    assert isolate(bus, a, None).returncode == 0
    for user in (NOBODY, DAEMON, BIN):
        r = dbus_send(bus, "Query", f"string:{a.uuid}", user=user)
        assert r.returncode == 0 and a.uuid in r.stdout


def exposure(unit: Path) -> float:
    out = subprocess.run(["systemd-analyze", "security", "--offline=true", str(unit)], capture_output=True, text=True)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out.stdout)
    assert m, out.stdout + out.stderr
    return float(m.group(1))


def test_unit_exposure_is_at_most_1_5() -> None:
    assert exposure(REPO / "systemd" / "svirtd.service") <= 1.5


def test_units_verify_together(tmp_path: Path) -> None:
    unit = (REPO / "systemd" / "svirtd.service").read_text()
    (tmp_path / "svirtd.service").write_text(
        unit.replace("ExecStart=/usr/sbin/svirtd", f"ExecStart={Path(sys.executable).parent}/svirtd"))
    (tmp_path / "svirtd-audit.socket").write_text((REPO / "systemd" / "svirtd-audit.socket").read_text())
    out = subprocess.run(["systemd-analyze", "verify", "--man=no", str(tmp_path / "svirtd.service"),
                          str(tmp_path / "svirtd-audit.socket")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    for capability in ("CAP_SYS_ADMIN", "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_NET_ADMIN", "CAP_SYS_PTRACE"):
        line = next(x for x in unit.splitlines() if x.startswith("CapabilityBoundingSet="))
        assert capability not in line


def test_polkit_policy_file_is_valid_xml_with_its_actions() -> None:
    import xml.etree.ElementTree as ET

    root = ET.parse(REPO / "data" / "org.svirt.Manager.policy").getroot()
    actions = {a.get("id"): a for a in root.findall("action")}
    granted = {f"org.svirt.manager1.{name}" for name in ("query", "isolate", "release", "verify", "audit", "cluster")}
    assert set(actions) == granted | {"org.svirt.manager1.all"}
    assert actions["org.svirt.manager1.query"].findtext("defaults/allow_any") == "yes"
    for name in ("isolate", "release", "verify", "audit", "all"):
        assert actions[f"org.svirt.manager1.{name}"].findtext("defaults/allow_any") == "auth_admin_keep"
    # Freeing a dead host's pairs cluster-wide: a password every time.
    assert actions["org.svirt.manager1.cluster"].findtext("defaults/allow_any") == "auth_admin"
    imply = actions["org.svirt.manager1.all"].find("annotate[@key='org.freedesktop.policykit.imply']")
    assert imply is not None and set((imply.text or "").split()) == granted
