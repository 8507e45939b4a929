"""Questions answered by the compiled policy itself, offline (edge adapter over libsepol).

audit2why computes an access decision the way the kernel would, MCS constraints included, and names
the booleans that would allow a denied access. setools reads filesystem labeling rules (genfscon,
fs_use). Used to tell the admin which boolean would let guests use unlabelable storage, and (policy
issue) to prove that the labels svirtd hands out are really isolated.
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import logging
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import selinux
from selinux import audit2why

log = logging.getLogger(__name__)


class Verdict(enum.IntEnum):
    """audit2why's answer codes."""

    ALLOW = audit2why.ALLOW
    DONTAUDIT = audit2why.DONTAUDIT
    TERULE = audit2why.TERULE
    BOOLEAN = audit2why.BOOLEAN
    CONSTRAINT = audit2why.CONSTRAINT
    RBAC = audit2why.RBAC
    BOUNDS = audit2why.BOUNDS
    BADSCON = audit2why.BADSCON
    BADTCON = audit2why.BADTCON
    BADTCLASS = audit2why.BADTCLASS
    BADPERM = audit2why.BADPERM
    BADCOMPUTE = audit2why.BADCOMPUTE
    NOPOLICY = audit2why.NOPOLICY
    UNKNOWN = audit2why.UNKNOWN


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    booleans: tuple[str, ...] = ()  # booleans that would allow it (verdict BOOLEAN)

    @property
    def allowed(self) -> bool:
        return self.verdict is Verdict.ALLOW


def _sepol_check_context(policy_file: Path, context: str) -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.fopen.restype = ctypes.c_void_p
    libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    libc.fclose.argtypes = [ctypes.c_void_p]
    sepol = ctypes.CDLL("libsepol.so.2")  # by soname: find_library runs ldconfig, which svirtd_t may not
    sepol.sepol_set_policydb_from_file.argtypes = [ctypes.c_void_p]
    sepol.sepol_check_context.argtypes = [ctypes.c_char_p]
    fp = libc.fopen(str(policy_file).encode(), b"r")
    if not fp:
        raise OSError(ctypes.get_errno(), f"cannot open {policy_file}")
    try:
        if sepol.sepol_set_policydb_from_file(fp) != 0:
            raise OSError(f"libsepol cannot read {policy_file}")
    finally:
        libc.fclose(fp)
    return bool(sepol.sepol_check_context(context.encode()) == 0)


def host_policy_file() -> Path | None:
    """The binary policy the kernel loaded (policy.<its version>); without SELinux enabled, the highest
    policy.N of the configured type."""
    base = Path(selinux.selinux_binary_policy_path())
    if selinux.is_selinux_enabled():
        loaded = base.with_name(f"{base.name}.{selinux.security_policyvers()}")
        if loaded.exists():
            return loaded
    candidates = sorted(base.parent.glob(base.name + ".*"),
                        key=lambda p: int(p.suffix[1:]) if p.suffix[1:].isdigit() else -1)
    return candidates[-1] if candidates else None


def _trim_heap() -> None:
    """Give freed heap back to the system: audit2why.finish() frees the policydb (~11 MB), but glibc keeps
    the pages mapped until asked."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: the next load reuses the memory instead
        ctypes.CDLL(None).malloc_trim(0)  # the process's own libc: find_library would run ldconfig


class PolicyJudge:
    """One compiled policy, loaded when a question needs it and let go when none came for a while
    (release_if_idle): an idle svirtd does not keep ~11 MB of policydb. audit2why keeps global state,
    hence the lock."""

    _lock = threading.Lock()
    _loaded: str | None = None
    _last_used = 0.0  # time.monotonic() of the last question (class-wide, as the state it guards)

    def __init__(self, policy_file: Path | None) -> None:
        self.policy_file = policy_file
        self._setools: Any = None
        self._setools_lock = threading.Lock()
        self._setools_failed = False

    def _ensure_loaded(self) -> None:
        if self.policy_file is None:
            raise FileNotFoundError("no compiled SELinux policy found")
        if PolicyJudge._loaded != str(self.policy_file):
            if PolicyJudge._loaded is not None:
                audit2why.finish()
                PolicyJudge._loaded = None
            if not self.policy_file.is_file():
                raise FileNotFoundError(f"{self.policy_file}: no such policy file")
            try:
                audit2why.init(str(self.policy_file))
            except (SystemError, RuntimeError) as exc:  # audit2why's own way of saying "not a policy"
                raise ValueError(f"{self.policy_file} is not a binary SELinux policy audit2why can read "
                                 f"({exc})") from None
            PolicyJudge._loaded = str(self.policy_file)
        PolicyJudge._last_used = time.monotonic()

    @property
    def loaded(self) -> bool:
        return PolicyJudge._loaded is not None

    def release_if_idle(self, idle_seconds: float) -> bool:
        """Let the policy go if no question came for idle_seconds (the next one loads it again, 0.2 s).
        True if it was let go."""
        with PolicyJudge._lock:
            if PolicyJudge._loaded is None or time.monotonic() - PolicyJudge._last_used < idle_seconds:
                return False
            audit2why.finish()
            PolicyJudge._loaded = None
        _trim_heap()
        return True

    def load(self) -> None:
        """Read the policy now (tens of milliseconds), e.g. in a worker thread at start: not on the
        event loop at the first denial of an audit flood."""
        with PolicyJudge._lock:
            self._ensure_loaded()

    def decide(self, scontext: str, tcontext: str, tclass: str, perms: list[str]) -> Decision:
        with PolicyJudge._lock:
            self._ensure_loaded()
            code, extra = audit2why.analyze(scontext, tcontext, tclass, perms)
        booleans = tuple(name for name, _value in extra) if code == audit2why.BOOLEAN and extra else ()
        return Decision(Verdict(code), booleans)

    def fs_context(self, fstype: str) -> str | None:
        """The label the policy gives files of a filesystem type without xattr support."""
        policy = self._policy()
        if policy is None:
            return None
        names = [fstype, fstype.split(".", 1)[0]]
        for name in names:
            for rule in policy.genfscons():
                if rule.fs == name and rule.path == "/":
                    return str(rule.context)
            for rule in policy.fs_uses():
                if rule.fs == name:
                    return str(rule.context)
        return None

    def _policy(self) -> Any:
        # Asked from several worker threads at once (a burst of guests on unlabelable storage): read once.
        with self._setools_lock:
            if self._setools is None and self.policy_file is not None and not self._setools_failed:
                try:
                    import setools  # noqa: PLC0415 - 0.2 s to load: only when a question needs it

                    self._setools = setools.SELinuxPolicy(str(self.policy_file))
                except Exception as exc:
                    self._setools_failed = True
                    log.warning("cannot read %s with setools: %s", self.policy_file, exc)
            return self._setools

    def valid_context(self, context: str) -> bool:
        """libsepol's sepol_check_context: user, role, type, level and their combination all valid in
        this policy (audit2why alone accepts a wrong role)."""
        if self.policy_file is None:
            return False
        with PolicyJudge._lock:
            return _sepol_check_context(self.policy_file, context)

    def booleans_for_storage(self, process_label: str, fstype: str) -> tuple[str, ...] | None:
        """Booleans that let a guest read/write files on this filesystem; () when none can; None if unknown."""
        context = self.fs_context(fstype)
        if context is None:
            return None
        try:
            decision = self.decide(process_label, context, "file", ["read", "write", "open"])
        except (OSError, ValueError) as exc:
            log.debug("policy question failed: %s", exc)
            return None
        if decision.verdict is Verdict.BOOLEAN:
            return tuple(b for b in decision.booleans if re.match(r"^virt_", b)) or decision.booleans
        return ()
