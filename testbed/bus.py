"""A private dbus-daemon with the system bus' semantics and svirtd's policy file loaded."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from .process import stop_process

REPO = Path(__file__).resolve().parent.parent
POLICY_FILE = REPO / "data" / "org.svirt.Manager.conf"
# polkitd must be able to own its name on the private bus, as on the system bus.
POLKIT_POLICY = Path("/usr/share/dbus-1/system.d/org.freedesktop.PolicyKit1.conf")

# The default policy of /usr/share/dbus-1/system.conf: deny owning and method calls unless a
# policy file allows them. Only the listen address, the daemon plumbing and includedir differ.
BUS_CONF = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <auth>EXTERNAL</auth>
  <listen>unix:path={socket}</listen>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Properties"/>
    <deny send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"
          send_member="UpdateActivationEnvironment"/>
  </policy>
  <policy user="root">
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Monitoring"/>
  </policy>
  <includedir>{policy_dir}</includedir>
</busconfig>
"""


class BusPolicyError(RuntimeError):
    """dbus-daemon reported an error while parsing a policy file (it starts anyway)."""


class PrivateBus:
    def __init__(self, workdir: Path, policy_files: tuple[Path, ...] = (POLICY_FILE, POLKIT_POLICY)) -> None:
        self.workdir = workdir
        self.socket = workdir / "system_bus_socket"
        self.policy_dir = workdir / "system.d"
        self.policy_files = policy_files
        self.proc: subprocess.Popen[bytes] | None = None
        self.stderr_path = workdir / "dbus-daemon.stderr"

    @property
    def address(self) -> str:
        return f"unix:path={self.socket}"

    def start(self) -> PrivateBus:
        self.workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o755)  # unprivileged test callers must reach the socket
        self.policy_dir.mkdir(exist_ok=True)
        for f in self.policy_files:
            shutil.copy(f, self.policy_dir / f.name)
        conf = self.workdir / "bus.conf"
        conf.write_text(BUS_CONF.format(socket=self.socket, policy_dir=self.policy_dir))
        with self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                ["dbus-daemon", f"--config-file={conf}", "--nofork", "--nopidfile", "--nosyslog",
                 "--print-address=1"],
                stdout=subprocess.PIPE, stderr=err,
            )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode().strip()
        if not line:
            raise RuntimeError(f"dbus-daemon did not start: {self.stderr_path.read_text()}")
        deadline = time.monotonic() + 5
        while not self.socket.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        errors = self.stderr_text()
        if "Encountered error" in errors:
            self.stop()
            raise BusPolicyError(f"dbus-daemon rejected a policy file: {errors.strip()}")
        return self

    def stderr_text(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def stop(self) -> None:
        stop_process(self.proc, 5)
        self.proc = None
