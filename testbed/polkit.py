"""The real polkitd on the private bus, with svirtd's actions and a test's rules.

polkitd reads actions and rules from fixed system directories; it is started inside `unshare -m`
with those directories bind-mounted over by temporary ones, so the host's are never touched. logind
is absent here, so only allow_any defaults and rules apply.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from .process import stop_process

REPO = Path(__file__).resolve().parent.parent
ACTIONS = Path("/usr/share/polkit-1/actions")
POLKITD = "/usr/lib/polkit-1/polkitd"
DBUS_POLICY = Path("/usr/share/dbus-1/system.d/org.freedesktop.PolicyKit1.conf")


class Polkitd:
    def __init__(self, workdir: Path, bus_address: str, rules: dict[str, str]) -> None:
        self.workdir = workdir
        self.bus_address = bus_address
        self.rules = rules
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0) -> Polkitd:
        actions, rules, empty = self.workdir / "actions", self.workdir / "rules.d", self.workdir / "empty"
        for d in (actions, rules, empty):
            d.mkdir(parents=True, exist_ok=True)
            d.chmod(0o755)
        self.workdir.chmod(0o755)
        for f in ACTIONS.iterdir():
            shutil.copy(f, actions / f.name)
        shutil.copy(REPO / "data" / "org.svirt.Manager.policy", actions / "org.svirt.Manager.policy")
        for name, text in self.rules.items():
            (rules / name).write_text(text)
            (rules / name).chmod(0o644)
        script = (f"mount --bind {actions} /usr/share/polkit-1/actions && "
                  f"mount --bind {rules} /usr/share/polkit-1/rules.d && "
                  f"mount --bind {empty} /etc/polkit-1/rules.d && "
                  f"exec env DBUS_SYSTEM_BUS_ADDRESS={self.bus_address} {POLKITD} --no-debug")
        self.proc = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                                     stdout=subprocess.DEVNULL,
                                     stderr=(self.workdir / "polkitd.log").open("wb"))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"polkitd exited: {(self.workdir / 'polkitd.log').read_text()}")
            out = subprocess.run(["busctl", f"--address={self.bus_address}", "status",
                                  "org.freedesktop.PolicyKit1"], capture_output=True)
            if out.returncode == 0:
                return self
            time.sleep(0.05)
        raise TimeoutError("polkitd did not take its bus name")

    def stop(self) -> None:
        stop_process(self.proc, 10)
        self.proc = None
