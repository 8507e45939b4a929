"""The host's SELinux state, read through the distro's libselinux bindings (edge adapter)."""

from __future__ import annotations

import logging
from pathlib import Path

import selinux

from .policy import LabelSpec

log = logging.getLogger(__name__)


def is_enabled() -> bool:
    return bool(selinux.is_selinux_enabled())


def is_enforcing() -> bool:
    """True only when SELinux is enabled AND enforcing: the kernel is really applying our labels."""
    return is_enabled() and selinux.security_getenforce() == 1


def load_label_spec() -> LabelSpec:
    domain_path = Path(selinux.selinux_virtual_domain_context_path())
    image_path = Path(selinux.selinux_virtual_image_context_path())
    try:
        return LabelSpec.from_context_files(domain_path.read_text(), image_path.read_text())
    except OSError as exc:
        raise RuntimeError(
            f"cannot read the policy's virtual context files ({domain_path}, {image_path}): {exc}. "
            "Install an SELinux policy with virtualization support (Debian: selinux-policy-default)."
        ) from exc


class DefaultLabels:
    """The policy's default file labels (file_contexts), for restoring when no original is known."""

    def __init__(self) -> None:
        self._handle = None
        try:
            self._handle = selinux.selabel_open(selinux.SELABEL_CTX_FILE, None, 0)
        except OSError as exc:
            log.warning("file_contexts unavailable, cannot fall back to policy defaults: %s", exc)

    def lookup(self, path: str, mode: int) -> str | None:
        if self._handle is None:
            return None
        try:
            rc, context = selinux.selabel_lookup_raw(self._handle, path, mode)
        except OSError:
            return None
        return str(context) if rc == 0 else None
