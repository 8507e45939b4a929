"""The proof of isolation (pure): judge every guest's process label against every resource label.

svirt's promise, checked against the compiled policy rather than assumed: for every ordered pair of
guests A != B, A's process is denied read/write/open/append on B's private images (by the MCS
constraint) and allowed on its own; shared (s0) images are readable and writable by every guest;
read-only content is readable and not writable. A shared object at a group's level (s0:cG) is
reachable by exactly the guests whose level holds cG. The decision function is injected (the policy
judge over libsepol in svirtd, anything in a unit test), so this module does no I/O.

Beyond files (seed 4.5, control planes): every guest's process is also judged against the objects every
qemu meets whatever it owns -- /dev/kvm (allowed), /dev/vhost-net and /dev/net/tun (allowed only to
profiles with network), host files (denied) -- and against the other guests' chardev sockets (their
image label at their level), monitor sockets (their process label: libvirt creates the monitor socket
in the guest's context) and images, whether or not anything of theirs is on disk yet.
"""

from __future__ import annotations

import enum
import stat
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from .models import Context, ResourceClass

PRIVATE_PERMS = ("read", "write", "open", "append")


@dataclass(frozen=True)
class Subject:
    """A guest's qemu process label."""

    uuid: str
    name: str
    label: str
    network: bool = True  # does its profile allow the network (tun/tap, vhost-net)?
    image_label: str = ""  # its private image label; "" for guests svirtd does not isolate


class Expect(enum.Enum):
    """Which guests a control-plane object must be open to."""

    ALL = "all"
    NETWORK = "network"  # guests whose profile has network
    NONE = "none"


@dataclass(frozen=True)
class ControlPlane:
    """An object every qemu meets whatever it owns (a device node, a host file), labeled as the loaded
    policy labels it."""

    path: str
    label: str
    tclass: str
    perms: tuple[str, ...]
    expect: Expect


@dataclass(frozen=True)
class Object:
    """A resource label as found on disk, and the guest it belongs to."""

    owner_uuid: str
    owner_name: str
    path: str
    label: str
    rclass: ResourceClass
    # A shared object at a group's level (s0:cG): open to the guests whose level holds cG, closed to all
    # others. Every other shared object must be open to every guest.
    members_only: bool = False
    # False for a stopped guest's file that libvirt's driver labels when qemu starts (and restores when it
    # stops): its label at rest is libvirt's remembered original, which the guest need not reach.
    own_access_expected: bool = True


@dataclass(frozen=True)
class Violation:
    # cross-guest | own-denied | shared-denied | group-leak | readonly-writable | readonly-unreadable |
    # control-denied | control-allowed | cross-guest-socket
    kind: str
    subject_uuid: str
    subject_name: str
    owner_uuid: str
    owner_name: str
    path: str
    label: str
    permission: str
    verdict: str

    @property
    def message(self) -> str:
        what = {
            "cross-guest": f"guest {self.subject_name} may {self.permission} guest {self.owner_name}'s private "
                           f"resource {self.path} ({self.label}): the two are NOT isolated",
            "own-denied": f"guest {self.subject_name} is denied {self.permission} on its own resource {self.path} "
                          f"({self.label}: {self.verdict})",
            "shared-denied": f"guest {self.subject_name} is denied {self.permission} on shared {self.path} "
                             f"({self.verdict})",
            "readonly-writable": f"guest {self.subject_name} may write read-only content {self.path}",
            "readonly-unreadable": f"guest {self.subject_name} cannot read content {self.path} ({self.verdict})",
            "group-leak": f"guest {self.subject_name} may {self.permission} {self.path} ({self.label}), shared "
                          f"only with a group it is not in",
            "control-denied": f"guest {self.subject_name} is denied {self.permission} on {self.path} "
                              f"({self.label}: {self.verdict}), which it needs",
            "control-allowed": f"guest {self.subject_name} may {self.permission} {self.path} ({self.label}), which "
                               "its profile forbids",
            "cross-guest-socket": f"guest {self.subject_name} may {self.permission} guest {self.owner_name}'s "
                                  f"{self.path} ({self.label}): the two are NOT isolated",
        }
        return what.get(self.kind, self.kind)


DEVICE_PERMS = ("open", "read", "write", "ioctl")
# (path, file type, class, permissions, who may, the type refpolicy gives it where file_contexts has none)
_PLANES: tuple[tuple[str, int, str, tuple[str, ...], Expect, str], ...] = (
    ("/dev/kvm", stat.S_IFCHR, "chr_file", DEVICE_PERMS, Expect.ALL, "kvm_device_t"),
    ("/dev/vhost-net", stat.S_IFCHR, "chr_file", DEVICE_PERMS, Expect.NETWORK, "vhost_device_t"),
    ("/dev/net/tun", stat.S_IFCHR, "chr_file", DEVICE_PERMS, Expect.NETWORK, "tun_tap_device_t"),
    # qemu reads /etc (etc_t: refpolicy allows it, for its configuration), never writes it.
    ("/etc/passwd", stat.S_IFREG, "file", ("write", "append"), Expect.NONE, "etc_t"),
    ("/etc/shadow", stat.S_IFREG, "file", ("read", "write"), Expect.NONE, "shadow_t"),
)


def control_planes(lookup: Callable[[str, int], str | None], state_dir: str) -> tuple[ControlPlane, ...]:
    """The control-plane objects, labeled by lookup (the policy's file_contexts) or refpolicy's type."""
    rows = [*_PLANES, (f"{state_dir}/state.db", stat.S_IFREG, "file", ("read", "write"), Expect.NONE,
                       "svirtd_var_lib_t")]
    planes = []
    for path, mode, tclass, perms, expect, fallback in rows:
        label = lookup(path, mode) or f"system_u:object_r:{fallback}:s0"
        planes.append(ControlPlane(path, label, tclass, perms, expect))
    return tuple(planes)


# decide(scontext, tcontext, tclass, [perm]) -> (allowed, verdict name)
Decide = Callable[[str, str, str, list[str]], tuple[bool, str]]


@dataclass(frozen=True)
class Proof:
    subjects: int
    objects: int
    ordered_pairs: int
    checks: int
    violations: tuple[Violation, ...]

    @property
    def ok(self) -> bool:
        return not self.violations

    def involving(self, uuid: str) -> tuple[Violation, ...]:
        return tuple(v for v in self.violations if uuid in (v.subject_uuid, v.owner_uuid))


def _categories(label: str) -> frozenset[int] | None:
    try:
        return Context.parse(label).mcs.categories
    except ValueError:
        return None


def dominates(subject_label: str, object_label: str) -> bool:
    """Does the subject's level hold every category of the object's (MCS dominance, one sensitivity)?"""
    mine, theirs = _categories(subject_label), _categories(object_label)
    return mine is not None and theirs is not None and theirs <= mine


def prove_isolation(subjects: Sequence[Subject], objects: Iterable[Object], decide: Decide,
                    planes: Sequence[ControlPlane] = ()) -> Proof:
    objs = list(objects)
    violations: list[Violation] = []
    checks = 0

    def judge(s: Subject, owner_uuid: str, owner_name: str, path: str, label: str, tclass: str, perm: str,
              want_allowed: bool, kind: str) -> None:
        nonlocal checks
        checks += 1
        allowed, verdict = decide(s.label, label, tclass, [perm])
        if allowed != want_allowed:
            violations.append(Violation(kind, s.uuid, s.name, owner_uuid, owner_name, path, label, perm, verdict))

    def check(s: Subject, o: Object, perm: str, want_allowed: bool, kind: str) -> None:
        judge(s, o.owner_uuid, o.owner_name, o.path, o.label, "file", perm, want_allowed, kind)

    def control(s: Subject) -> None:
        for plane in planes:
            want = plane.expect is Expect.ALL or (plane.expect is Expect.NETWORK and s.network)
            for perm in plane.perms:
                judge(s, "host", "host", plane.path, plane.label, plane.tclass, perm, want,
                      "control-denied" if want else "control-allowed")
        for other in subjects:
            if other.uuid == s.uuid or not other.image_label:
                continue
            for what, label, tclass, perm in (
                    ("chardev socket", other.image_label, "sock_file", "write"),
                    ("monitor socket", other.label, "unix_stream_socket", "connectto"),
                    ("image", other.image_label, "file", "read"),
                    ("image", other.image_label, "file", "write")):
                judge(s, other.uuid, other.name, what, label, tclass, perm, False,
                      "cross-guest" if tclass == "file" else "cross-guest-socket")

    for s in subjects:
        for o in objs:
            if o.rclass is ResourceClass.PRIVATE:
                own = o.owner_uuid == s.uuid
                if own and not o.own_access_expected:
                    continue
                for perm in PRIVATE_PERMS:
                    check(s, o, perm, own, "own-denied" if own else "cross-guest")
            elif o.rclass is ResourceClass.SHARED:
                # s0: every guest; a group's s0:cG: exactly the guests whose level holds cG.
                member = dominates(s.label, o.label) if o.members_only else True
                for perm in ("read", "write"):
                    check(s, o, perm, member, "shared-denied" if member else "group-leak")
            elif o.rclass is ResourceClass.READONLY:
                check(s, o, "read", True, "readonly-unreadable")
                check(s, o, "write", False, "readonly-writable")
        if planes:
            control(s)
    owners = {o.owner_uuid for o in objs} | ({x.uuid for x in subjects if x.image_label} if planes else set())
    pairs = sum(1 for s in subjects for owner in owners if owner != s.uuid)
    return Proof(subjects=len(subjects), objects=len(objs), ordered_pairs=pairs, checks=checks,
                 violations=tuple(violations))
