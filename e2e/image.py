"""Build (or reuse) the Debian 12 image the end-to-end test boots with SELinux enforcing.

Two cache levels under .cache/e2e (never committed): the debootstrap tree with every package
(keyed on the package list: ~4 min to build, reused across source changes), and the bootable image
with svirtd's Debian packages installed and the whole tree labeled (keyed on the package list and
every input of the packages: ~1 min from the cached tree, `make deb` included). The packages are built
on the host (`make deb`, from the vendored wheels of `make vendor`) and installed in the chroot with
apt, as an admin would.

The Debian mirror is read from this machine's own apt sources at run time, never hard-coded.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".cache" / "e2e"
SUITE = "bookworm"
BASE_INCLUDE = ("linux-image-amd64,selinux-policy-default,selinux-basics,policycoreutils,selinux-utils,auditd,"
                "systemd-sysv,udev,kmod,procps,e2fsprogs,iproute2,dbus,attr")
CHROOT_PACKAGES = ("libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86 qemu-utils "
                   "python3-libvirt python3-selinux python3-semanage python3-audit python3-setools python3-systemd")
# Everything `make deb` builds the packages from (the wheels included), and what the image adds itself.
DEB_INPUTS = ("svirtd", "policy", "data", "systemd", "man", "debian", "docs", "cockpit", "README.md", "Makefile",
              "vendor-requirements.txt", ".cache/vendor")
SOURCES = (*DEB_INPUTS, "e2e/guest", "e2e/image.py")


def log(msg: str) -> None:
    print(f"[e2e {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def sh(*cmd: str, **kw: object) -> subprocess.CompletedProcess[str]:
    result: subprocess.CompletedProcess[str] = subprocess.run(  # type: ignore[call-overload]
        list(cmd), check=True, text=True, **kw)
    return result


def mirror() -> str:
    """The Debian mirror this machine uses for bookworm main (deb822 stanzas or one-line entries)."""
    for f in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        if not f.is_file():
            continue
        text = f.read_text()
        for stanza in re.split(r"\n\s*\n", text):
            fields = dict(re.findall(r"(?m)^(\w[\w-]*):\s*(.*)$", stanza))
            if SUITE in fields.get("Suites", "").split() and "main" in fields.get("Components", "").split():
                return str(fields["URIs"].split()[0])
        m = re.search(rf"(?m)^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+{SUITE}\s+.*\bmain\b", text)
        if m:
            return m.group(1)
    raise RuntimeError(f"no Debian mirror for {SUITE} main in /etc/apt/sources*: cannot debootstrap")


def digest(*parts: str | Path) -> str:
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            files = sorted(p for p in part.rglob("*") if p.is_file()) if part.is_dir() else [part]
            for f in files:
                # Build products next to the sources (make deb builds its own from a copy).
                if {"__pycache__", "tmp"} & set(f.parts) or f.suffix in (".pyc", ".pp"):
                    continue
                h.update(str(f.relative_to(REPO)).encode())
                h.update(f.read_bytes())
        else:
            h.update(part.encode())
    return h.hexdigest()[:16]


def base_key() -> str:
    return digest(SUITE, BASE_INCLUDE, CHROOT_PACKAGES)


def image_key() -> str:
    return digest(base_key(), *(REPO / s for s in SOURCES))


class Chroot:
    """/proc, /sys and /dev mounted for apt and pip; services never started (policy-rc.d)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def __enter__(self) -> Chroot:
        for fs, target in (("proc", "proc"), ("sysfs", "sys")):
            sh("mount", "-t", fs, fs, str(self.root / target))
        sh("mount", "--bind", "/dev", str(self.root / "dev"))
        (self.root / "usr/sbin/policy-rc.d").write_text("#!/bin/sh\nexit 101\n")
        (self.root / "usr/sbin/policy-rc.d").chmod(0o755)
        shutil.copy("/etc/resolv.conf", self.root / "etc/resolv.conf")
        return self

    def run(self, script: str) -> None:
        sh("chroot", str(self.root), "/bin/sh", "-ec", script,
           env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C",
                "HOME": "/root"})

    def __exit__(self, *exc: object) -> None:
        (self.root / "usr/sbin/policy-rc.d").unlink(missing_ok=True)
        for target in ("dev", "sys", "proc"):
            subprocess.run(["umount", "-l", str(self.root / target)], check=False)


def build_base(tarball: Path) -> None:
    work = CACHE / "base-build"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    log(f"debootstrap {SUITE} from {mirror()} (about 2 minutes)")
    sh("debootstrap", "--variant=minbase", f"--include={BASE_INCLUDE}", SUITE, str(work), mirror(),
       stdout=subprocess.DEVNULL)
    with Chroot(work) as chroot:
        log("libvirt, qemu and the Python bindings in the chroot")
        chroot.run(f"apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends {CHROOT_PACKAGES}"
                   " >/dev/null && apt-get clean")
    log("caching the base tree")
    sh("tar", "--xattrs", "--zstd", "-cf", str(tarball), "-C", str(work), ".")
    shutil.rmtree(work, ignore_errors=True)


def configure(root: Path) -> None:
    """The environment the stock refpolicy/libvirt need on Debian 12 (listed in docs/e2e.md)."""
    (root / "etc/fstab").write_text("/dev/vda / ext4 defaults 0 1\n")
    (root / "etc/hostname").write_text("svirtd-e2e\n")
    config = root / "etc/selinux/config"
    config.write_text(re.sub(r"(?m)^SELINUX=.*$", "SELINUX=enforcing", config.read_text()))
    units = root / "etc/systemd/system"
    for unit in ("serial-getty@ttyS0.service", "getty@tty1.service", "systemd-machined.service"):
        (units / unit).unlink(missing_ok=True)
        (units / unit).symlink_to("/dev/null")
    (root / "usr/share/dbus-1/system-services/org.freedesktop.machine1.service").unlink(missing_ok=True)
    qemu_conf = root / "etc/libvirt/qemu.conf"
    qemu_conf.write_text(qemu_conf.read_text() + "\n# svirtd e2e: TCG guests inside a TCG VM\n"
                         "namespaces = []\ncgroup_controllers = [ ]\n")
    shutil.copy(REPO / "e2e/guest/scenario.sh", root / "usr/local/sbin/svirtd-e2e-scenario")
    (root / "usr/local/sbin/svirtd-e2e-scenario").chmod(0o755)
    shutil.copy(REPO / "e2e/guest/e2e-test.service", units / "svirtd-e2e.service")
    # refpolicy 2.20221101 gaps, not svirtd's: for `virsh save`/`restore` libvirtd (virtd_t) runs
    # libvirt_iohelper (lib_t: "cannot execute binary ... Permission denied"), labels the pipe between
    # it and qemu with the guest's image label ("unable to set security context ... on fd"), and the
    # iohelper (still virtd_t) then reads and writes that pipe ("Unable to read stdio").
    (root / "usr/src/e2e-env.cil").write_text(
        "(allow virtd_t lib_t (file (execute_no_trans)))\n"
        "(allow virtd_t svirt_image_t (fifo_file (relabelto getattr open read write append ioctl)))\n")


def build_image(base: Path, out: Path, key: str) -> None:
    root = CACHE / "root"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    log("unpacking the cached base tree")
    sh("tar", "--xattrs", "--zstd", "-xf", str(base), "-C", str(root))
    log("make deb (svirtd and svirtd-selinux, from the vendored wheels)")
    sh("make", "-C", str(REPO), "deb")
    debs = root / "usr/src/svirtd-debs"
    debs.mkdir(parents=True)
    for pattern in ("svirtd_*.deb", "svirtd-selinux_*.deb"):
        for deb in (REPO / "dist").glob(pattern):
            shutil.copy(deb, debs)
    configure(root)
    with Chroot(root) as chroot:
        log("apt-get install ./svirtd_*.deb ./svirtd-selinux_*.deb in the chroot (units enabled by the package)")
        chroot.run("cd /usr/src/svirtd-debs && apt-get update -q >/dev/null && "
                   "apt-get install -y -q --no-install-recommends ./svirtd_*.deb ./svirtd-selinux_*.deb >/dev/null && "
                   "apt-get clean && semodule -i /usr/src/e2e-env.cil && "
                   "systemctl enable svirtd-e2e.service >/dev/null 2>&1 && passwd -d root >/dev/null")
        shutil.rmtree(debs)
    log("labeling the tree with the image's own policy (svirtd module included)")
    policy = sorted((root / "etc/selinux/default/policy").glob("policy.*"))[-1]
    sh("setfiles", "-r", str(root), "-c", str(policy),
       str(root / "etc/selinux/default/contexts/files/file_contexts"), str(root))
    for name in ("vmlinuz", "initrd.img"):
        shutil.copy(os.path.realpath(root / name), CACHE / f"{name}.{key}")
    raw = CACHE / "disk.img"
    raw.unlink(missing_ok=True)
    sh("qemu-img", "create", "-q", "-f", "raw", str(raw), "4G")
    sh("mkfs.ext4", "-q", "-F", "-d", str(root), str(raw))
    sh("zstd", "-q", "-3", "-f", "-T0", str(raw), "-o", str(out))
    raw.unlink()
    shutil.rmtree(root, ignore_errors=True)


def ensure_image() -> tuple[Path, Path, Path]:
    """(image.zst, vmlinuz, initrd) for the current inputs, built only when missing."""
    CACHE.mkdir(parents=True, exist_ok=True)
    if not list((REPO / ".cache/vendor").glob("*.whl")):
        raise RuntimeError(".cache/vendor has no wheels: run `make vendor` (make e2e does)")
    base = CACHE / f"base-{base_key()}.tar.zst"
    if not base.exists():
        for old in CACHE.glob("base-*.tar.zst"):
            old.unlink()
        build_base(base)
    else:
        log(f"reusing the cached base tree {base.name}")
    key = image_key()
    image = CACHE / f"image-{key}.img.zst"
    if not image.exists():
        for old in [*CACHE.glob("image-*.img.zst"), *CACHE.glob("vmlinuz.*"), *CACHE.glob("initrd.img.*")]:
            old.unlink()
        build_image(base, image, key)
    else:
        log(f"reusing the cached image {image.name}")
    return image, CACHE / f"vmlinuz.{key}", CACHE / f"initrd.img.{key}"


if __name__ == "__main__":
    print(ensure_image())
    sys.exit(0)
