"""Build svirtd's policy module and install it into a COPY of the host's policy store.

Never the real store: /var/lib/selinux and /etc/selinux are copied under a root directory, and
expand-check=1 is set in the copy's semanage.conf (Debian ships 0, which silently accepts modules that
violate neverallow rules). `semodule -p ROOT` then rebuilds the copy's binary policy, which the tests
judge with libsepol.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEVEL_MAKEFILE = Path("/usr/share/selinux/devel/Makefile")


def build_module(sources: Path, workdir: Path, name: str) -> Path:
    """Compile NAME.te/.if/.fc from sources with the refpolicy devel Makefile; the .pp path."""
    workdir.mkdir(parents=True, exist_ok=True)
    for ext in ("te", "if", "fc"):
        src = sources / f"{name}.{ext}"
        if src.exists():
            shutil.copy(src, workdir / src.name)
        else:
            (workdir / f"{name}.{ext}").write_text("")
    out = subprocess.run(["make", "-f", str(DEVEL_MAKEFILE), f"{name}.pp"], cwd=workdir, capture_output=True,
                         text=True)
    if out.returncode != 0:
        raise RuntimeError(f"building {name}.pp failed:\n{out.stdout}\n{out.stderr}")
    return workdir / f"{name}.pp"


class PolicyStoreCopy:
    def __init__(self, root: Path, expand_check: bool = True) -> None:
        self.root = root
        shutil.copytree("/var/lib/selinux", root / "var/lib/selinux", symlinks=True)
        shutil.copytree("/etc/selinux", root / "etc/selinux", symlinks=True)
        conf = root / "etc/selinux/semanage.conf"
        text = re.sub(r"(?m)^expand-check\s*=.*$", "", conf.read_text())
        conf.write_text(text + f"\nexpand-check={1 if expand_check else 0}\n")

    def install(self, module: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["semodule", "-p", str(self.root), "-s", "default", "-i", str(module)],
                              capture_output=True, text=True)

    @property
    def policy_file(self) -> Path:
        files = sorted((self.root / "etc/selinux/default/policy").glob("policy.*"))
        return files[-1]


def store_with_svirtd(root: Path, build: Path) -> PolicyStoreCopy:
    """A store copy with svirtd.pp from policy/ installed (neverallows checked); RuntimeError if it fails."""
    store = PolicyStoreCopy(root)
    installed = store.install(build_module(REPO / "policy", build, "svirtd"))
    if installed.returncode != 0:
        raise RuntimeError(f"installing svirtd.pp failed:\n{installed.stderr}")
    return store
