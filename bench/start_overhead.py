"""What confinement costs a guest start, and how fast definitions get labeled.

Same run, same guests (TCG, 4 disks each), real libvirtd, svirtd on a private bus:
- `virsh start` of each guest with no hook, with a no-op hook in qemu.d and with svirtd's hook, side by
  side in a rotating order (libvirtd re-reads its hook directory on every start), median times: once
  with disks that carry their labels already, once with fresh unlabeled disks before every start (the
  hook has to label them); svirtd_vs_noop_hook_ms is svirtd's own cost beyond running any hook;
- the hook alone, as libvirtd runs it (its sanitized environment, the definition on stdin, `prepare
  begin` then `start begin`), svirtd's against the no-op one, alternating, HOOK_ROUNDS each: what
  svirtd's hook adds to a start without qemu's start-up noise (hook_svirtd_vs_noop_ms). `--hook-only`
  runs this part alone;
- where that goes: each phase of a start and stop (prepare, start, started, release) against the no-op
  hook, wall time (hook_phase_*_vs_noop_ms) and the CPU time of the hook's processes
  (hook_phase_*_cpu_vs_noop_ms: what a loaded machine blurs least); a bus client's own cost, a fresh
  `dbus-send` and `busctl` pinging svirtd (process start + connect + auth + one round trip); and
  svirtd's server time for `prepare`
  (HookEvent minus a Ping, on one open connection: the part the hook cannot change);
- define -> all 4 disks labeled: p99 over 100 guests defined one after the other;
- 1,000 guests defined in a burst: time until every disk of every one is labeled, and how many
  translation-file writes svirtd batched them into (per definition).

The LAST line printed is one JSON object.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid as uuidlib
from pathlib import Path

import libvirt
from dbus_fast import Message
from dbus_fast.aio import MessageBus

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


def translations_cover(daemon: SvirtdProcess, guests: int) -> bool:
    """svirtd's last translation-file write named this many guests."""
    lines = [line for line in daemon.log_text().splitlines() if "MCS translations written" in line]
    return bool(lines) and f"written: {guests} guests" in lines[-1]


def timed_start(uri: str, name: str) -> float:
    t0 = time.perf_counter()
    subprocess.run(["virsh", "-c", uri, "start", name], check=True, capture_output=True)
    elapsed = time.perf_counter() - t0
    subprocess.run(["virsh", "-c", uri, "destroy", name], check=True, capture_output=True)
    return elapsed


NOOP_HOOK = "#!/bin/sh\nexit 0\n"
VARIANTS = ("none", "noop", "svirtd")  # no hook at all; a no-op hook in qemu.d; svirtd's hook


def set_hook(hook: Path, text: str | None) -> None:
    if text is None:
        hook.unlink(missing_ok=True)
    else:
        hook.write_text(text)
        hook.chmod(0o755)


def fresh_disks(disks: list[Path]) -> None:
    """Replace each disk by a new unlabeled file (a new inode), as a restored backup would be: whoever
    confines the start has to label it."""
    for disk in disks:
        new = make_disk(disk.with_name(disk.name + ".new"))
        os.replace(new, disk)


def compare_starts(libvirtd: Libvirtd, guests: dict[str, list[Path]], hook_text: str,
                   fresh: bool) -> dict[str, list[float]]:
    """Start times of each variant, side by side: per guest, the three starts in a rotating order (a start
    right after another one is not the same start). fresh: new unlabeled disks before every start
    (outside the timing), so svirtd's hook has to label them; else they carry their labels already."""
    svirtd_hook, noop_hook = libvirtd.hooks_dir / HOOK_NAME, libvirtd.hooks_dir / "00-noop"
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for round_ in range(START_ROUNDS):
        for i, (name, disks) in enumerate(guests.items()):
            shift = (round_ + i) % len(VARIANTS)
            for variant in VARIANTS[shift:] + VARIANTS[:shift]:
                set_hook(svirtd_hook, hook_text if variant == "svirtd" else None)
                set_hook(noop_hook, NOOP_HOOK if variant == "noop" else None)
                if fresh:
                    fresh_disks(disks)
                times[variant].append(timed_start(libvirtd.uri, name))
    set_hook(noop_hook, None)
    set_hook(svirtd_hook, hook_text)
    return times


HOOK_ROUNDS = 60
HOOK_ENVIRONMENT = {"HOME": "/root", "LC_ALL": "C", "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}


def compare_hooks(libvirtd: Libvirtd, hook_text: str, name: str, xml: str) -> dict[str, float]:
    """Median ms of running each hook for `prepare begin` and `start begin` of a guest whose disks are in
    place, as libvirtd does (it waits for each), svirtd's and the no-op one alternating."""
    # Beside qemu.d, not in it: libvirtd does not run these.
    hooks = {v: libvirtd.hooks_dir.parent / f"bench-{v}-hook" for v in ("svirtd", "noop")}
    set_hook(hooks["svirtd"], hook_text)
    set_hook(hooks["noop"], NOOP_HOOK)
    times: dict[str, list[float]] = {v: [] for v in hooks}
    try:
        for round_ in range(HOOK_ROUNDS):
            for variant in (("svirtd", "noop") if round_ % 2 == 0 else ("noop", "svirtd")):
                t0 = time.perf_counter()
                for op in ("prepare", "start"):
                    subprocess.run([str(hooks[variant]), name, op, "begin", "-"], input=xml.encode(), check=True,
                                   capture_output=True, env=HOOK_ENVIRONMENT, cwd="/")
                times[variant].append(time.perf_counter() - t0)
    finally:
        for hook in hooks.values():
            set_hook(hook, None)
    return {v: statistics.median(t) * 1000 for v, t in times.items()}


PHASES = (("prepare", "begin"), ("start", "begin"), ("started", "begin"), ("release", "end"))


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def hook_phases(libvirtd: Libvirtd, hook_text: str, name: str, xml: str) -> dict[str, tuple[float, float]]:
    """Per phase of a start and a stop, what svirtd's hook costs beyond the no-op hook: median ms of wall
    time, and of CPU time of the hook's own processes (what a loaded machine does not blur; svirtd's
    time is not in it). svirtd's and the no-op hook alternate per round (each: the phases in libvirt's
    order)."""
    hooks = {v: libvirtd.hooks_dir.parent / f"bench-{v}-hook" for v in ("svirtd", "noop")}
    set_hook(hooks["svirtd"], hook_text)
    set_hook(hooks["noop"], NOOP_HOOK)
    wall: dict[tuple[str, str], list[float]] = {(v, p): [] for v in hooks for p, _ in PHASES}
    cpu: dict[tuple[str, str], list[float]] = {(v, p): [] for v in hooks for p, _ in PHASES}
    try:
        for round_ in range(HOOK_ROUNDS):
            for variant in (("svirtd", "noop") if round_ % 2 == 0 else ("noop", "svirtd")):
                for phase, sub in PHASES:
                    c0, t0 = children_cpu(), time.perf_counter()
                    subprocess.run([str(hooks[variant]), name, phase, sub, "-"], input=xml.encode(), check=True,
                                   capture_output=True, env=HOOK_ENVIRONMENT, cwd="/")
                    wall[variant, phase].append(time.perf_counter() - t0)
                    cpu[variant, phase].append(children_cpu() - c0)
    finally:
        for hook in hooks.values():
            set_hook(hook, None)

    def over_noop(times: dict[tuple[str, str], list[float]], phase: str) -> float:
        return (statistics.median(times["svirtd", phase]) - statistics.median(times["noop", phase])) * 1000
    return {p: (over_noop(wall, p), over_noop(cpu, p)) for p, _ in PHASES}


def client_ping_ms(address: str) -> dict[str, float]:
    """Median ms of a fresh bus client pinging svirtd: process start, connect, auth, one round trip."""
    argv = {"dbus_send": ["dbus-send", f"--bus={address}", "--print-reply", "--dest=org.svirt.Manager",
                          "/org/svirt/Manager", "org.freedesktop.DBus.Peer.Ping"],
            "busctl": ["busctl", f"--address={address}", "call", "org.svirt.Manager", "/org/svirt/Manager",
                       "org.freedesktop.DBus.Peer", "Ping"]}
    times: dict[str, list[float]] = {k: [] for k in argv}
    for _ in range(HOOK_ROUNDS):
        for k, cmd in argv.items():
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True, env=HOOK_ENVIRONMENT)
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(t) * 1000 for k, t in times.items()}


async def server_prepare_ms(address: str, spooled: Path, name: str) -> float:
    """svirtd's own time for HookEvent(prepare) of a stopped guest, as at a start: its round trip minus a
    Ping's, on one connection opened beforehand (so neither pays for connecting); GuestStopped before
    each (not timed)."""
    bus = await MessageBus(bus_address=address).connect()
    stopped = Message(destination="org.svirt.Manager", path="/org/svirt/Manager", interface="org.svirt.Manager1",
                      member="GuestStopped", signature="s", body=[name])
    calls = {"ping": Message(destination="org.svirt.Manager", path="/org/svirt/Manager",
                             interface="org.freedesktop.DBus.Peer", member="Ping"),
             "prepare": Message(destination="org.svirt.Manager", path="/org/svirt/Manager",
                                interface="org.svirt.Manager1", member="HookEvent", signature="ss",
                                body=["prepare", str(spooled)])}
    times: dict[str, list[float]] = {k: [] for k in calls}
    try:
        for _ in range(HOOK_ROUNDS):
            await bus.call(stopped)
            for k, msg in calls.items():
                t0 = time.perf_counter()
                reply = await bus.call(msg)
                times[k].append(time.perf_counter() - t0)
                assert reply is not None and reply.error_name is None, reply and reply.body
    finally:
        bus.disconnect()
    return (statistics.median(times["prepare"]) - statistics.median(times["ping"])) * 1000


def hook_breakdown(libvirtd: Libvirtd, bus_address: str, hook_text: str, name: str, xml: str) -> dict[str, float]:
    phases = hook_phases(libvirtd, hook_text, name, xml)
    pings = client_ping_ms(bus_address)
    spooled = libvirtd.hook_env.parent / "hook" / "bench-server.xml"
    spooled.write_text(xml)
    spooled.chmod(0o600)
    try:
        server = asyncio.run(server_prepare_ms(bus_address, spooled, name))
    finally:
        spooled.unlink()
    print("per phase, svirtd's hook minus the no-op one (wall, CPU of its processes): "
          + ", ".join(f"{p} {ms:.1f} ms, {cpu:.1f} ms" for p, (ms, cpu) in phases.items()))
    print(f"a fresh client pinging svirtd: dbus-send {pings['dbus_send']:.1f} ms, busctl {pings['busctl']:.1f} ms; "
          f"svirtd's server time for prepare: {server:.2f} ms")
    return {**{f"hook_phase_{p}_vs_noop_ms": round(ms, 2) for p, (ms, _) in phases.items()},
            **{f"hook_phase_{p}_cpu_vs_noop_ms": round(cpu, 2) for p, (_, cpu) in phases.items()},
            "dbus_send_ping_ms": round(pings["dbus_send"], 2), "busctl_ping_ms": round(pings["busctl"], 2),
            "server_prepare_ms": round(server, 2)}


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="svirtd-bench-start-"))
    # A directory of this run's own: two runs side by side must not remove each other's images.
    images = Path(tempfile.mkdtemp(prefix="svirtd-bench-", dir="/var/lib/libvirt/images"))
    images.chmod(0o755)  # qemu runs as libvirt-qemu
    libvirtd = Libvirtd(work / "libvirtd").start()
    bus = PrivateBus(work / "bus").start()
    daemon = SvirtdProcess(work / "svirtd", bus.address, libvirtd.uri, libvirtd.hook_env,
                           auto_confine_names=[f"{PREFIX}*"], log_level="info")  # info: translation writes
    conn = libvirt.open(libvirtd.uri)
    try:
        daemon.start()
        hook_text = (libvirtd.hooks_dir / HOOK_NAME).read_text()

        # 1. virsh start: no hook, a no-op hook, svirtd's hook; disks labeled already, then fresh ones.
        start_guests: dict[str, list[Path]] = {}
        for i in range(START_GUESTS):
            xml, disks = make_guest(images, f"{PREFIX}start-{i}")
            conn.defineXML(xml)
            start_guests[f"{PREFIX}start-{i}"] = disks
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all(labeled(p) for d in start_guests.values() for p in d):
            time.sleep(0.01)
        first = f"{PREFIX}start-0"
        hooks_ms = compare_hooks(libvirtd, hook_text, first, conn.lookupByName(first).XMLDesc(0))
        print(f"the hook alone, prepare + start begin (median of {HOOK_ROUNDS} each): no-op {hooks_ms['noop']:.1f} ms, "
              f"svirtd's {hooks_ms['svirtd']:.1f} ms")
        hook_json = {"hook_noop_ms": round(hooks_ms["noop"], 2), "hook_svirtd_ms": round(hooks_ms["svirtd"], 2),
                     "hook_svirtd_vs_noop_ms": round(hooks_ms["svirtd"] - hooks_ms["noop"], 2),
                     **hook_breakdown(libvirtd, bus.address, hook_text, first, conn.lookupByName(first).XMLDesc(0))}
        if "--hook-only" in sys.argv[1:]:
            print(json.dumps(hook_json))
            return
        medians: dict[str, dict[str, float]] = {}
        for scenario, fresh in (("labeled", False), ("fresh", True)):
            times = compare_starts(libvirtd, start_guests, hook_text, fresh)
            medians[scenario] = {v: statistics.median(t) for v, t in times.items()}
            m = medians[scenario]
            print(f"virsh start, disks {scenario} (median of {len(times['none'])} each): no hook {m['none']:.3f}s, "
                  f"no-op hook {m['noop']:.3f}s, svirtd's hook {m['svirtd']:.3f}s")
        labeled_m, fresh_m = medians["labeled"], medians["fresh"]

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

        # 3. a burst of 1,000 definitions (and how many translation-file writes svirtd batches them into).
        burst = [make_guest(images, f"{PREFIX}burst-{i}") for i in range(BURST)]
        writes_before = daemon.log_text().count("MCS translations written")
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
        deadline = time.monotonic() + 30  # the last batch is written 0.2 s after the last change
        while time.monotonic() < deadline and not translations_cover(daemon, START_GUESTS + LATENCY_GUESTS + BURST):
            time.sleep(0.1)
        setrans_writes = daemon.log_text().count("MCS translations written") - writes_before
        print(f"{BURST} definitions ({BURST * DISKS} disks): defined in {defined:.1f}s, all labeled after "
              f"{burst_s:.1f}s; {len(pending)} disks unlabeled")
        print(f"translation file: {setrans_writes} writes for {BURST} definitions")
        print(json.dumps({
            "guests": START_GUESTS,
            "disks_per_guest": DISKS,
            "start_without_s": round(labeled_m["none"], 4),
            "noop_hook_s": round(labeled_m["noop"], 4),
            "start_with_s": round(labeled_m["svirtd"], 4),
            "overhead_ratio": round(labeled_m["svirtd"] / labeled_m["none"], 3),
            "svirtd_vs_noop_hook_ms": round((labeled_m["svirtd"] - labeled_m["noop"]) * 1000, 1),
            "fresh_start_without_s": round(fresh_m["none"], 4),
            "fresh_noop_hook_s": round(fresh_m["noop"], 4),
            "fresh_start_with_s": round(fresh_m["svirtd"], 4),
            "fresh_overhead_ratio": round(fresh_m["svirtd"] / fresh_m["none"], 3),
            "fresh_svirtd_vs_noop_hook_ms": round((fresh_m["svirtd"] - fresh_m["noop"]) * 1000, 1),
            "setrans_writes_per_define": round(setrans_writes / BURST, 4),
            "define_to_labeled_p99_ms": round(p99, 2),
            "burst_1000_defines_all_labeled_s": round(burst_s, 2) if not pending else None,
            "burst_unlabeled_disks": len(pending),
            **hook_json,
        }))
    finally:
        daemon.stop()
        remove_domains(libvirtd.uri, lambda n: n.startswith(PREFIX))
        conn.close()
        bus.stop()
        libvirtd.stop()
        shutil.rmtree(images, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
