"""`make e2e`: svirtd on a real SELinux-enforcing kernel, end to end.

Builds or reuses the image (e2e/image.py), boots a fresh copy of it under TCG with
`security=selinux enforcing=1`, lets the scenario inside run (e2e/guest/scenario.sh), and judges the
RESULT lines it prints on the serial console. Exit status 0 only when every expected RESULT is there
and PASS. The serial log is kept in .cache/e2e/last-serial.log.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from image import CACHE, ensure_image, log

EXPECTED = (
    "enforcing",                 # the kernel enforces SELinux
    "svirtd_domain",             # svirtd runs in svirtd_t (policy/ module, started by systemd)
    "labeled",                   # two guests, two levels; libvirt labeled each disk with its guest's pair
    "static_seclabel",           # svirtd wrote the static relabel='yes' seclabel into the definition
    "started",                   # both guests run (libvirt execs qemu in the labels)
    "qemu_label_a",              # ps -Z equals Query's label
    "qemu_label_b",
    "cross_guest_open_denied",   # guest a's qemu cannot open guest b's disk: Permission denied
    "own_disk_open_allowed",     # control: it can open its own
    "kernel_avc",                # the kernel logged the MCS denial
    "denial_attributed",         # svirtd's audit watcher named both guests (read over D-Bus)
    "journal_fields",            # and logged it to the journal with GUEST_NAME / AVC_* fields
    "verify_ok",                 # the proof of isolation against the loaded policy
    "labels_restored",           # undefine restored the original label
    "no_svirtd_denials",         # svirtd's own domain was never denied anything
    # issue 12: confinement that holds while guests run (libvirt applies svirtd's pair)
    "hotplug_disk",              # attach --live into running a: a's pair; b's qemu denied it
    "hotunplug_restored",        # detach --live (virtio-scsi): the original label is back
    "snapshot_overlay",          # external disk-only snapshot: overlay private, old top kept private
    "blockcommit",               # commit back and pivot succeeds
    "restorecon_repaired",       # restorecon -R resets running a's disk type: svirtd puts a's label back
    "backing_chain_unlisted",    # a backing file only in the qcow2 header: the guest starts and reads it
    "define_then_start",         # define + start at once: ps -Z == Query == the disk's pair
    "transient_guest",           # virsh create: confined with a pair in the table; destroy releases it
    "save_restore",              # virsh save + restore: same label, running again
    "per_disk_norelabel",        # <seclabel relabel='no'> on a disk: its label unchanged
    "tree_labeled",              # a 9p share: svirtd labels the whole tree with the guest's pair, it starts
    # issue 17: profiles as SELinux types, guest groups
    "nonet_denied",              # a nonet guest's qemu (svirt_nonet_t) opening /dev/net/tun: denied, AVC its
    "net_allowed",               # a default guest with <interface type='ethernet'> starts; qemu holds the tap
    "group_share",               # two group members open the s0:cG disk; a third guest is denied it
    "verify_after_runtime_ops",  # the proof holds after hotplug, snapshots, restarts, groups (stopped guests too)
    # issue 14: svirtd as systemd runs it, installed from the .deb
    "systemd_ready_after_reconcile",  # `systemctl start` returns with guests defined meanwhile isolated
    "status_line",               # `systemctl status` shows svirtd's STATUS= text
    "systemctl_reload",          # a config change applied by `systemctl reload`, same PID
    "sighup_survives",           # kill -HUP reloads, svirtd stays
    "stop_sticks",               # stopped stays stopped under audit traffic
    "watchdog",                  # a SIGSTOPped svirtd is restarted by systemd
    "journal_catalog",           # journalctl -x MESSAGE_ID=<cross-guest denial> shows the catalog text
)
# Boot and the whole scenario under TCG (the scenario unit itself stops at 30 min); issue 17 added four
# guests and two svirtd restarts (~2 min).
BOOT_TIMEOUT = 35 * 60


def boot(image: Path, kernel: Path, initrd: Path, serial_log: Path) -> str:
    with tempfile.TemporaryDirectory(prefix="svirtd-e2e-", dir=CACHE) as tmp:
        disk = Path(tmp) / "disk.img"
        subprocess.run(["zstd", "-q", "-d", "--sparse", str(image), "-o", str(disk)], check=True)
        cmd = ["qemu-system-x86_64", "-accel", "tcg,thread=multi", "-cpu", "max", "-smp", "2", "-m", "2048",
               "-nographic", "-no-reboot", "-kernel", str(kernel), "-initrd", str(initrd),
               "-append", "root=/dev/vda rw console=ttyS0 security=selinux enforcing=1 panic=-1",
               "-drive", f"file={disk},format=raw,if=virtio", "-nic", "none"]
        log("booting the enforcing VM (TCG)")
        with serial_log.open("w") as out:
            try:
                subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               timeout=BOOT_TIMEOUT, check=False)
            except subprocess.TimeoutExpired:
                out.write(f"\n[e2e] TIMEOUT after {BOOT_TIMEOUT}s\n")
    return serial_log.read_text(errors="replace")


def judge(serial: str) -> dict[str, tuple[str, str]]:
    results: dict[str, tuple[str, str]] = {}
    for m in re.finditer(r"RESULT (\S+) (PASS|FAIL) ?(.*)", serial.replace("\r", "")):
        results[m.group(1)] = (m.group(2), m.group(3).strip())
    return results


def main() -> int:
    started = time.monotonic()
    image, kernel, initrd = ensure_image()
    built = time.monotonic()
    serial_log = CACHE / "last-serial.log"
    serial = boot(image, kernel, initrd, serial_log)
    results = judge(serial)
    ok = True
    for name in EXPECTED:
        status, detail = results.get(name, ("MISSING", "no RESULT line"))
        ok &= status == "PASS"
        print(f"RESULT {name} {status} {detail[:300]}")
    for name in sorted(set(results) - set(EXPECTED)):
        print(f"RESULT {name} {results[name][0]} (unexpected) {results[name][1][:200]}")
    if "E2E DONE" not in serial:
        ok = False
        print("the scenario did not finish; serial log tail:")
        print("\n".join(serial.splitlines()[-60:]))
    elif not ok:
        section = serial[serial.find("--- AVC denials"):]
        print(section[:6000])
    total = time.monotonic() - started
    print(f"e2e wall time: {total:.0f}s (image {built - started:.0f}s, boot+scenario {total - (built - started):.0f}s)"
          f"; serial log {serial_log}")
    print(f"E2E {'PASSED' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    if shutil.which("qemu-system-x86_64") is None:
        print("qemu-system-x86_64 is missing (make deps installs it)")
        sys.exit(2)
    sys.exit(main())
