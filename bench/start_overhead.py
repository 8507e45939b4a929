"""What confinement costs a guest start, and how fast definitions get labeled.

Same run, same guests (TCG, 4 disks each), real libvirtd, svirtd on a private bus:
- `virsh start` of each guest with and without svirtd's hook, alternating per start and in which one
  goes first (libvirtd re-reads its hook directory on every start), median times and their ratio;
- define -> all 4 disks labeled: p99 over 100 guests defined one after the other;
- 1,000 guests defined in a burst: time until every disk of every one is labeled.

The LAST line printed is one JSON object.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid as uuidlib
from pathlib import Path

import libvirt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from testbed.bus import PrivateBus
from testbed.daemon import SvirtdProcess
from testbed.guests import Disk, domain_xml, make_disk
from testbed.libvirtd import HOOK_NAME, Libvirtd, remove_domains

PREFIX = "svb-"
DISKS = 4
START_GUESTS = 10
START_ROUNDS = 4
LATENCY_GUESTS = 100
BURST = 1000


def labeled(path: Path) -> bool:
    try:
        return os.getxattr(path, "security.selinux").startswith(b"system_u:object_r:svirt_image_t:s0:c")
    except OSError:
        return False


def make_guest(images: Path, name: str) -> tuple[str, list[Path]]:
    disks = [make_disk(images / f"{name}-{i}.img") for i in range(DISKS)]
    xml = domain_xml(name, str(uuidlib.uuid4()), [Disk(p, f"vd{chr(97 + i)}") for i, p in enumerate(disks)])
    return xml, disks


def timed_start(uri: str, name: str) -> float:
    t0 = time.perf_counter()
    subprocess.run(["virsh", "-c", uri, "start", name], check=True, capture_output=True)
    elapsed = time.perf_counter() - t0
    subprocess.run(["virsh", "-c", uri, "destroy", name], check=True, capture_output=True)
    return elapsed


def set_hook(hook: Path, text: str | None) -> None:
    if text is None:
        hook.unlink(missing_ok=True)
    else:
        hook.write_text(text)
        hook.chmod(0o755)


def compare_starts(libvirtd: Libvirtd, names: list[str], hook_text: str) -> tuple[list[float], list[float]]:
    """Start times without and with the hook; which goes first alternates (a start right after
    another one is not the same start)."""
    hook = libvirtd.hooks_dir / HOOK_NAME
    times: dict[bool, list[float]] = {False: [], True: []}
    for round_ in range(START_ROUNDS):
        for i, name in enumerate(names):
            for hooked in ((False, True) if (round_ + i) % 2 == 0 else (True, False)):
                set_hook(hook, hook_text if hooked else None)
                times[hooked].append(timed_start(libvirtd.uri, name))
    set_hook(hook, hook_text)
    return times[False], times[True]


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="svirtd-bench-start-"))
    images = Path("/var/lib/libvirt/images") / "svirtd-bench"
    libvirtd = Libvirtd(work / "libvirtd").start()
    bus = PrivateBus(work / "bus").start()
    daemon = SvirtdProcess(work / "svirtd", bus.address, libvirtd.uri, libvirtd.hook_env,
                           auto_confine_names=[f"{PREFIX}*"], log_level="warning")
    conn = libvirt.open(libvirtd.uri)
    try:
        daemon.start()
        hook_text = (libvirtd.hooks_dir / HOOK_NAME).read_text()

        # 1. virsh start with and without the hook.
        names = []
        for i in range(START_GUESTS):
            xml, disks = make_guest(images, f"{PREFIX}start-{i}")
            conn.defineXML(xml)
            names.append(f"{PREFIX}start-{i}")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(labeled(p) for p in images.glob(f"{PREFIX}start-*.img")):
            time.sleep(0.01)
        without, with_hook = compare_starts(libvirtd, names, hook_text)
        start_without, start_with = statistics.median(without), statistics.median(with_hook)
        print(f"virsh start (median of {len(without)}): without hook {start_without:.3f}s, "
              f"with svirtd's hook {start_with:.3f}s")

        # 2. define -> labeled latency, one guest after the other.
        latencies: list[float] = []
        for i in range(LATENCY_GUESTS):
            xml, disks = make_guest(images, f"{PREFIX}lat-{i}")
            conn.defineXML(xml)
            t0 = time.perf_counter()
            while not all(labeled(p) for p in disks):
                time.sleep(0.0005)
            latencies.append(time.perf_counter() - t0)
        p99 = sorted(latencies)[int(len(latencies) * 0.99) - 1] * 1000
        print(f"define -> 4 disks labeled: median {statistics.median(latencies) * 1000:.1f} ms, p99 {p99:.1f} ms")

        # 3. a burst of 1,000 definitions.
        burst = [make_guest(images, f"{PREFIX}burst-{i}") for i in range(BURST)]
        t0 = time.perf_counter()
        for xml, _ in burst:
            conn.defineXML(xml)
        defined = time.perf_counter() - t0
        pending = [p for _, disks in burst for p in disks]
        deadline = time.monotonic() + 300
        while pending and time.monotonic() < deadline:
            pending = [p for p in pending if not labeled(p)]
            time.sleep(0.05)
        burst_s = time.perf_counter() - t0
        print(f"{BURST} definitions ({BURST * DISKS} disks): defined in {defined:.1f}s, all labeled after "
              f"{burst_s:.1f}s; {len(pending)} disks unlabeled")
        print(json.dumps({
            "guests": START_GUESTS,
            "disks_per_guest": DISKS,
            "start_without_s": round(start_without, 4),
            "start_with_s": round(start_with, 4),
            "overhead_ratio": round(start_with / start_without, 3),
            "define_to_labeled_p99_ms": round(p99, 2),
            "burst_1000_defines_all_labeled_s": round(burst_s, 2) if not pending else None,
            "burst_unlabeled_disks": len(pending),
        }))
    finally:
        daemon.stop()
        remove_domains(libvirtd.uri, lambda n: n.startswith(PREFIX))
        conn.close()
        bus.stop()
        libvirtd.stop()
        shutil.rmtree(images, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
