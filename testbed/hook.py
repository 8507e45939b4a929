"""svirtd's libvirt hook, installed for the tests (under its own name, never over a real install).

libvirtd discovers /etc/libvirt/hooks/qemu.d/ at start: when the directory is empty then, hooks stay
off until it restarts. The hook is therefore installed before the harness starts libvirtd, and a
libvirtd that was already running without it is restarted once.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TEMPLATE = REPO / "data" / "libvirt" / "svirtd-hook.sh"
HOOK = Path("/etc/libvirt/hooks/qemu.d/svirtd-testbed")
HOOK_ENV = Path("/run/svirtd-testbed/hook.env")


def install_hook(path: Path = HOOK, hook_env: Path = HOOK_ENV) -> bool:
    """Install (or refresh) the hook; True when it was not there before."""
    existed = path.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(TEMPLATE.read_text().replace("@HOOK_ENV@", str(hook_env)))
    path.chmod(0o755)
    return not existed


def remove_hook(path: Path = HOOK) -> None:
    path.unlink(missing_ok=True)


def clear_hook_env(hook_env: Path = HOOK_ENV) -> None:
    """Between tests no svirtd is there: the hook then starts guests unconfined, as a host without svirtd."""
    hook_env.unlink(missing_ok=True)
    markers = hook_env.parent / "unconfined"
    if markers.is_dir():
        for marker in markers.iterdir():
            marker.unlink(missing_ok=True)
