"""`make demo`: svirtd's main job, end to end on real parts, then everything cleaned up again.

Starts a private system-like D-Bus with svirtd's policy, libvirtd if none runs, svirtd itself; defines
two small real guests; shows each guest's label (busctl, svirtctl) and its disk's security.selinux;
undefines them and shows the original labels back.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from testbed.bus import PrivateBus
from testbed.daemon import SvirtdProcess
from testbed.guests import GuestFactory
from testbed.libvirtd import Libvirtd

BIN = Path(sys.executable).parent


def show(*cmd: str) -> str:
    print(f"\n$ {shlex.join(cmd)}")
    out = subprocess.run(cmd, capture_output=True, text=True)
    text = (out.stdout + out.stderr).rstrip()
    print(text)
    return text


def label_of(path: Path) -> str:
    return subprocess.run(["getfattr", "--absolute-names", "-n", "security.selinux", "--only-values", str(path)],
                          capture_output=True, text=True).stdout.strip("\0\n")


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="svirtd-demo-"))
    bus = PrivateBus(work / "bus")
    libvirtd = Libvirtd(work / "libvirtd")
    guests = GuestFactory(prefix="svirtd-demo", uri=libvirtd.uri)
    daemon: SvirtdProcess | None = None
    try:
        bus.start()
        print(f"private system-like bus: {bus.address} (policy: data/org.svirt.Manager.conf)")
        libvirtd.start()
        print(f"private libvirtd (its own namespace; the host's is untouched): {libvirtd.uri}")
        daemon = SvirtdProcess(work / "svirtd", bus.address, libvirtd.uri, libvirtd.hook_env,
                               auto_confine_names=["svirtd-demo-*"], log_level="info")
        daemon.start()
        print(f"svirtd: ready (state in {daemon.state_dir})")

        web = guests.new(name="svirtd-demo-web", define=False)
        db = guests.new(name="svirtd-demo-db", define=False)
        for g in (web, db):
            xml = work / f"{g.name}.xml"
            xml.write_text(g.xml)
            show("virsh", "-c", guests.uri, "define", str(xml))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not all(label_of(g.disk).count(":") == 4 for g in (web, db)):
            time.sleep(0.05)

        addr = f"--address={bus.address}"
        show("busctl", addr, "call", "org.svirt.Manager", "/org/svirt/Manager", "org.svirt.Manager1", "List")
        show(str(BIN / "svirtctl"), f"--bus-address={bus.address}", "query", web.name)
        show("busctl", addr, "call", "org.svirt.Manager", "/org/svirt/Manager",
             "org.svirt.Manager1", "Query", "s", db.uuid)
        for g in (web, db):
            show("getfattr", "--absolute-names", "-n", "security.selinux", str(g.disk))
        labels = {label_of(g.disk) for g in (web, db)}
        if len(labels) != 2 or not all("svirt_image_t:s0:c" in x for x in labels):
            print(f"\nFAILED: expected two different per-guest image labels, got {labels}")
            return 1

        print("\nUndefining both guests: svirtd restores the original labels and frees the pairs.")
        for g in (web, db):
            show("virsh", "-c", guests.uri, "undefine", g.name)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(label_of(g.disk) for g in (web, db)):
            time.sleep(0.05)
        for g in (web, db):
            show("getfattr", "--absolute-names", "-n", "security.selinux", str(g.disk))
        show(str(BIN / "svirtctl"), f"--bus-address={bus.address}", "status")
        print("\ndemo OK")
        return 0
    finally:
        if daemon is not None:
            daemon.stop()
        guests.cleanup()
        bus.stop()
        libvirtd.stop()
        subprocess.run(["rm", "-rf", str(work)], check=False)


if __name__ == "__main__":
    sys.exit(main())
