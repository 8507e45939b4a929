"""Issue 14: svirtd as a distribution would ship it -- `make deb` and `make install DESTDIR=...`.

Both are run for real, from a copy of this checkout (so nothing here touches the checkout's build/ or
dist/, and a path of the copy found in a package proves the build leaked it): the .debs are built
with debhelper, judged by lintian, listed and unpacked; the staged install is compared with them.
Nothing is installed on this host (`apt-get install ./dist/*.deb` would load the policy module into
the host's store); the e2e image installs the packages with apt and boots them under systemd.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from svirtd.config import Config

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
VENDOR = REPO / ".cache" / "vendor"

# Where the packages put things (FHS): what README's "Packaging" section promises.
SVIRTD_PATHS = (
    "usr/sbin/svirtd", "usr/bin/svirtctl",
    "usr/lib/svirtd/python/svirtd/service.py", "usr/lib/svirtd/python/pydantic/__init__.py",
    "usr/lib/svirtd/python/dbus_fast/__init__.py",
    "usr/libexec/svirtd/libvirt-hook", "etc/libvirt/hooks/qemu.d/svirtd",
    "usr/lib/systemd/system/svirtd.service", "usr/lib/systemd/system/svirtd-audit.socket",
    "usr/share/dbus-1/system.d/org.svirt.Manager.conf",
    "usr/share/dbus-1/system-services/org.svirt.Manager.service",
    "usr/share/polkit-1/actions/org.svirt.Manager.policy",
    "etc/svirt/svirtd.conf",
    "usr/share/doc/svirtd/copyright", "usr/share/doc/svirtd/examples/50-svirtd-delegate.rules.example",
    "usr/share/man/man8/svirtd.8.gz", "usr/share/man/man5/svirtd.conf.5.gz",
    "usr/share/man/man5/org.svirt.Manager.5.gz", "usr/share/man/man1/svirtctl.1.gz",
    "usr/lib/systemd/catalog/svirtd.catalog", "usr/share/bash-completion/completions/svirtctl",
    "usr/share/dbus-1/interfaces/org.svirt.Manager1.xml", "usr/share/dbus-1/interfaces/org.svirt.Guest1.xml",
    "usr/share/dbus-1/interfaces/org.svirt.Job1.xml",
    "usr/share/cockpit/svirt/manifest.json", "usr/share/cockpit/svirt/index.html",
    "usr/share/cockpit/svirt/svirt.js", "usr/share/cockpit/svirt/svirt.css",
)
SELINUX_PATHS = ("usr/share/selinux/packages/svirtd.pp", "usr/share/selinux/devel/include/contrib/svirtd.if")


def copy_checkout(dest: Path) -> None:
    """The files `git` tracks or would track (untracked, not ignored), plus the vendored wheels."""
    names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, names):
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    shutil.copytree(VENDOR, dest / ".cache" / "vendor")


def make(src: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["make", "-C", str(src), *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def tools(as_root: None) -> None:
    """debhelper, lintian, scdoc... as `make test` installs everything else; the wheels from PyPI once."""
    subprocess.run([str(REPO / "scripts" / "install-deps.sh")], check=True, timeout=900)
    if not (VENDOR / ".complete").exists():
        out = make(REPO, "vendor")
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]


@pytest.fixture(scope="module")
def built(tools: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, Path]]:
    """(source copy, svirtd .deb, svirtd-selinux .deb), built with `make deb` in a fresh copy."""
    src = tmp_path_factory.mktemp("pkg") / "svirtd-src"
    copy_checkout(src)
    out = make(src, "deb")
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    [deb] = (src / "dist").glob("svirtd_*_amd64.deb")
    [selinux_deb] = (src / "dist").glob("svirtd-selinux_*_all.deb")
    yield src, deb, selinux_deb
    shutil.rmtree(src, ignore_errors=True)


def contents(deb: Path) -> dict[str, str]:
    """path -> dpkg-deb's listing line (mode, owner...), paths without the leading './'."""
    listing = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True).stdout
    out: dict[str, str] = {}
    for line in listing.splitlines():
        path = line.split(None, 5)[5].split(" -> ")[0].removeprefix("./").rstrip("/")
        out[path] = line
    return out


def test_lintian_finds_no_errors(built: tuple[Path, Path, Path]) -> None:
    src, _, _ = built
    [changes] = (src / "dist").glob("svirtd_*.changes")
    out = subprocess.run(["lintian", "--pedantic", str(changes)], capture_output=True, text=True, timeout=300)
    errors = [line for line in out.stdout.splitlines() if line.startswith("E:")]
    assert not errors, out.stdout
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_packages_put_every_file_where_the_fhs_says(built: tuple[Path, Path, Path]) -> None:
    _src, deb, selinux_deb = built
    files, policy_files = contents(deb), contents(selinux_deb)
    assert not [p for p in SVIRTD_PATHS if p not in files], sorted(files)
    assert not [p for p in SELINUX_PATHS if p not in policy_files], sorted(policy_files)
    assert not [p for p in files if p.startswith("usr/share/selinux")]  # the module is svirtd-selinux's only
    # Nothing in /usr/local, /opt or /etc/systemd (that is the admin's); units in /usr/lib/systemd/system.
    assert not [p for p in files if p.startswith(("usr/local", "opt", "etc/systemd", "lib/"))]
    assert files["etc/libvirt/hooks/qemu.d/svirtd"].startswith("l")
    assert "-> /usr/libexec/svirtd/libvirt-hook" in files["etc/libvirt/hooks/qemu.d/svirtd"]
    for exe in ("usr/sbin/svirtd", "usr/bin/svirtctl", "usr/libexec/svirtd/libvirt-hook"):
        assert files[exe].startswith("-rwxr-xr-x root/root"), files[exe]
    # No byte-compiled files shipped (postinst compiles them, prerm removes them).
    assert not [p for p in files if p.endswith(".pyc")]
    control = subprocess.run(["dpkg-deb", "-f", str(deb), "Depends", "Architecture"], capture_output=True,
                             text=True, check=True).stdout
    for dependency in ("python3-libvirt", "python3-selinux", "python3-semanage", "python3-audit",
                       "python3-setools", "python3-systemd", "python3 (<< 3.12)", "svirtd-selinux (=",
                       "dbus-bin", "mawk"):  # the hook's dbus-send and mawk
        assert dependency in control, control
    assert "pydantic" not in control and "dbus-fast" not in control  # those are shipped privately
    conffiles = subprocess.run(["dpkg-deb", "--info", str(deb), "conffiles"], capture_output=True, text=True,
                               check=True).stdout
    assert conffiles.split() == ["/etc/svirt/svirtd.conf"]  # the hook link is code, not configuration


def test_nothing_in_the_packages_names_the_build_tree(built: tuple[Path, Path, Path], tmp_path: Path) -> None:
    src, deb, selinux_deb = built
    root = tmp_path / "root"
    for d in (deb, selinux_deb):
        subprocess.run(["dpkg-deb", "-x", str(d), str(root)], check=True)
    needles = [str(src).encode(), str(REPO).encode(), b"debian/tmp", b"build/deb"]
    leaks = [(str(f.relative_to(root)), n.decode()) for f in root.rglob("*") if f.is_file() and not f.is_symlink()
             for n in needles if n in f.read_bytes()]
    assert not leaks
    wrapper = (root / "usr/sbin/svirtd").read_text()
    assert wrapper.startswith("#!/usr/bin/python3 -I\n") and 'sys.path.insert(0, "/usr/lib/svirtd/python")' in wrapper


def test_every_man_page_renders(built: tuple[Path, Path, Path], tmp_path: Path) -> None:
    _, deb, _ = built
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp_path)], check=True)
    pages = sorted((tmp_path / "usr/share/man").rglob("*.gz"))
    assert len(pages) >= 3
    rendered: dict[str, str] = {}
    for page in pages:
        out = subprocess.run(["man", "-l", str(page)], capture_output=True, text=True, timeout=60,
                             env={**os.environ, "MANWIDTH": "100"})
        assert out.returncode == 0 and not out.stderr, (page, out.stderr)
        text = re.sub(".\x08", "", out.stdout)  # grotty's overstrike bold, off a terminal
        assert "NAME" in text and "SEE ALSO" in text, page
        rendered[page.name] = text
    for documented in ("--check-config", "SIGHUP", "SIGTERM", "78", "/run/svirtd", "hook.env", "MESSAGE_ID",
                       "Type=notify", "READY=1", "watchdog"):
        assert documented in rendered["svirtd.8.gz"], documented
    for option in Config.model_fields:  # every option of svirtd.conf, documented
        assert f"{option} =" in rendered["svirtd.conf.5.gz"], option


def test_make_install_stages_the_package_layout_relocatably(tools: None, tmp_path: Path) -> None:
    """`make install DESTDIR=...` from a copy of this checkout: the same files as the .deb, nothing naming
    DESTDIR or the copy, the daemon importable from the staged private path, an edited config kept."""
    src, root = tmp_path / "src", tmp_path / "root"
    copy_checkout(src)

    def install() -> None:
        out = make(src, "install", f"DESTDIR={root}")
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]

    install()
    # The package's layout; dh_compress gzips man pages and dh_installdocs adds the copyright file.
    staged = [p.removesuffix(".gz") for p in SVIRTD_PATHS + SELINUX_PATHS if not p.endswith("/copyright")]
    assert not [p for p in staged if not os.path.lexists(root / p)]
    assert os.readlink(root / "etc/libvirt/hooks/qemu.d/svirtd") == "/usr/libexec/svirtd/libvirt-hook"
    same = {"usr/share/dbus-1/system.d/org.svirt.Manager.conf": "data/org.svirt.Manager.conf",
            "usr/share/dbus-1/system-services/org.svirt.Manager.service": "data/org.svirt.Manager.service",
            "usr/share/polkit-1/actions/org.svirt.Manager.policy": "data/org.svirt.Manager.policy",
            "usr/lib/systemd/system/svirtd.service": "systemd/svirtd.service",
            "usr/lib/systemd/system/svirtd-audit.socket": "systemd/svirtd-audit.socket",
            "etc/svirt/svirtd.conf": "data/svirtd.conf"}
    for installed, shipped in same.items():
        assert (root / installed).read_bytes() == (REPO / shipped).read_bytes(), installed
        assert (root / installed).stat().st_mode & 0o777 == 0o644, installed
    hook = root / "usr/libexec/svirtd/libvirt-hook"
    assert hook.stat().st_mode & 0o777 == 0o755
    assert 'HOOK_ENV="/run/svirtd/hook.env"' in hook.read_text() and "@HOOK_ENV@" not in hook.read_text()
    assert not (root / "etc/systemd").exists() and not (root / "opt").exists()
    needles = [str(root).encode(), str(src).encode()]
    assert not [f for f in root.rglob("*") if f.is_file() and not f.is_symlink()
                and any(n in f.read_bytes() for n in needles)]
    # The staged daemon runs from its private path (pydantic 2 there, libvirt & co. from Debian).
    pydir = root / "usr/lib/svirtd/python"
    version = subprocess.run(["/usr/bin/python3", "-I", "-c", f"import sys; sys.path.insert(0, {str(pydir)!r}); "
                              "from svirtd.service import main; main(['--version'])"],
                             capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("svirtd "), version
    # And so do its helpers: the tree walker is a `python3 -m svirtd.treewalk` child, which finds svirtd
    # only because svirtd tells it where it was imported from (the e2e image's 9p share found this).
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "file").write_text("data\n")
    check = subprocess.run(["/usr/bin/python3", "-I", "-c", f"import sys; sys.path.insert(0, {str(pydir)!r}); "
                            "from svirtd.relabel import run_treewalk; "
                            f"print(run_treewalk('check', {str(tree)!r}, 'system_u:object_r:svirt_image_t:s0:c1,c2'))"],
                           capture_output=True, text=True, timeout=60, cwd="/")
    assert check.returncode == 0 and "'entries': 2" in check.stdout, check
    conf = root / "etc/svirt/svirtd.conf"
    conf.write_text('log_level = "debug"\n')
    install()
    assert conf.read_text() == 'log_level = "debug"\n'


def test_make_install_without_wheels_says_to_run_make_vendor(tools: None, tmp_path: Path) -> None:
    src = tmp_path / "src"
    copy_checkout(src)
    shutil.rmtree(src / ".cache" / "vendor")
    for target in ("install", "deb"):
        out = make(src, target, f"DESTDIR={tmp_path / 'root'}")
        assert out.returncode != 0 and "run make vendor first" in out.stdout + out.stderr, (target, out)
        assert "pip download" not in out.stdout  # no network: the message, not a download


def test_the_e2e_image_is_keyed_on_what_the_packages_are_made_of() -> None:
    """e2e/image.py rebuilds its image when an input of `make deb` changes: the two lists must agree."""
    makefile = (REPO / "Makefile").read_text()
    [sources] = re.findall(r"(?m)^DEB_SOURCES\s*:=\s*(.*)$", makefile)
    image = (REPO / "e2e" / "image.py").read_text()
    [inputs] = re.findall(r"(?s)^DEB_INPUTS = \((.*?)\)\n", image, re.M)
    assert sources.split() == re.findall(r'"([^"]+)"', inputs)
