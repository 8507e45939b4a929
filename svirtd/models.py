"""The one vocabulary every layer speaks: levels, contexts, assignments, resources.

Everything that crosses a boundary (store, D-Bus, libvirt, relabel engine) is one of these models,
never a context string spliced by hand.
"""

from __future__ import annotations

import enum
import re
import uuid as uuidlib
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_CATEGORY = 1023  # refpolicy's MCS build: categories c0..c1023

_CAT_RE = re.compile(r"^c(\d{1,4})$")
_SENS_RE = re.compile(r"^s(\d{1,3})$")


def parse_categories(text: str) -> frozenset[int]:
    """Parse an MCS category set such as ``c1,c5.c9`` (ranges allowed) into integers."""
    cats: set[int] = set()
    if not text:
        return frozenset()
    for item in text.split(","):
        lo_text, dot, hi_text = item.partition(".")
        lo = _parse_category(lo_text)
        hi = _parse_category(hi_text) if dot else lo
        if hi < lo:
            raise ValueError(f"category range {item!r} runs backwards")
        cats.update(range(lo, hi + 1))
    return frozenset(cats)


def _parse_category(text: str) -> int:
    m = _CAT_RE.match(text.strip())
    if not m or int(m.group(1)) > MAX_CATEGORY:
        raise ValueError(f"{text!r} is not an MCS category (c0..c{MAX_CATEGORY})")
    return int(m.group(1))


def format_categories(cats: frozenset[int] | set[int]) -> str:
    """Compact form of a category set, using ranges: {0,1,2,5} -> 'c0.c2,c5'."""
    out: list[str] = []
    ordered = sorted(cats)
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        if j == i:
            out.append(f"c{ordered[i]}")
        elif j == i + 1:
            out.extend((f"c{ordered[i]}", f"c{ordered[j]}"))
        else:
            out.append(f"c{ordered[i]}.c{ordered[j]}")
        i = j + 1
    return ",".join(out)


class McsLevel(BaseModel):
    """Any single MCS level (sensitivity + category set), as found in foreign labels."""

    model_config = ConfigDict(frozen=True)

    sensitivity: int = 0
    categories: frozenset[int] = frozenset()

    @classmethod
    def parse(cls, text: str) -> McsLevel:
        sens_text, _, cats_text = text.strip().partition(":")
        m = _SENS_RE.match(sens_text)
        if not m:
            raise ValueError(f"{text!r} is not an MCS level (expected s0 or s0:cA,cB)")
        return cls(sensitivity=int(m.group(1)), categories=parse_categories(cats_text))

    def dominates(self, other: McsLevel) -> bool:
        return self.sensitivity >= other.sensitivity and self.categories >= other.categories

    def __str__(self) -> str:
        cats = format_categories(self.categories)
        return f"s{self.sensitivity}:{cats}" if cats else f"s{self.sensitivity}"


class Level(BaseModel):
    """A guest's level: sensitivity s0 and exactly two categories cA < cB.

    Pairs only: a single category would be a subset of other guests' pairs, so a guest holding
    one could be dominated by (and thus readable from) every guest whose pair contains it.
    """

    model_config = ConfigDict(frozen=True)

    low: Annotated[int, Field(ge=0, le=MAX_CATEGORY)]
    high: Annotated[int, Field(ge=0, le=MAX_CATEGORY)]

    @model_validator(mode="after")
    def _ordered(self) -> Level:
        if self.low >= self.high:
            raise ValueError(f"a guest level needs two different categories cA < cB, got c{self.low},c{self.high}")
        return self

    @classmethod
    def parse(cls, text: str) -> Level:
        mcs = McsLevel.parse(text)
        if mcs.sensitivity != 0 or len(mcs.categories) != 2:
            raise ValueError(f"{text!r} is not a guest level (expected s0:cA,cB with two categories)")
        low, high = sorted(mcs.categories)
        return cls(low=low, high=high)

    @property
    def pair(self) -> tuple[int, int]:
        return (self.low, self.high)

    def as_mcs(self) -> McsLevel:
        return McsLevel(sensitivity=0, categories=frozenset(self.pair))

    def __str__(self) -> str:
        return f"s0:c{self.low},c{self.high}"


class Context(BaseModel):
    """An SELinux security context user:role:type:level (raw, untranslated)."""

    model_config = ConfigDict(frozen=True)

    user: str
    role: str
    type: str
    level: str

    @classmethod
    def parse(cls, text: str) -> Context:
        parts = text.strip().rstrip("\0").split(":", 3)
        if len(parts) != 4 or not all(parts):
            raise ValueError(f"{text!r} is not a full SELinux context (user:role:type:level)")
        user, role, type_, level = parts
        for end in level.split("-", 1):  # a level or a low-high range; kept as the policy wrote it
            McsLevel.parse(end)
        return cls(user=user, role=role, type=type_, level=level)

    def with_level(self, level: Level | McsLevel | str) -> Context:
        return self.model_copy(update={"level": str(level)})

    @property
    def mcs(self) -> McsLevel:
        # A range "low-high" (e.g. s0-s0:c0.c1023) is judged by its low end here.
        return McsLevel.parse(self.level.split("-", 1)[0])

    def __str__(self) -> str:
        return f"{self.user}:{self.role}:{self.type}:{self.level}"


class ResourceClass(enum.StrEnum):
    """How a resource is labeled, following libvirt's sVirt classes."""

    PRIVATE = "private"  # only this guest: image type with the guest's pair
    SHARED = "shared"  # <shareable/>: image type at s0, reachable by every guest
    READONLY = "readonly"  # cdrom, <readonly/>, backing layers, kernel/initrd: content type at s0
    UNHANDLED = "unhandled"  # reported, never touched (e.g. PCI/USB hostdev)


class ResourceKind(enum.StrEnum):
    FILE = "file"  # a regular file
    BLOCK = "block"  # a block device node named as a block disk
    SOCKET = "socket"  # a unix socket chardev (may not exist before qemu creates it)
    TREE = "tree"  # a directory tree (virtiofs/9p filesystem, TPM state)
    CHAR = "char"  # a host character device node (evdev, USB, VFIO group, /dev/sg, TPM): libvirt's to label
    NONE = "none"  # nothing on the host to label (network disk, emulated device...)


class Resource(BaseModel):
    """One guest resource as found in the domain XML (pure: nothing observed yet)."""

    model_config = ConfigDict(frozen=True)

    path: str
    device: str  # what it is in the guest: disk vda, nvram, serial0, filesystem /mnt...
    kind: ResourceKind
    rclass: ResourceClass
    note: str = ""  # why it is unhandled, or other facts for Query
    optional: bool = False  # may legitimately be absent (a socket qemu creates, NVRAM before first boot)
    # Who CAN label it: svirtd (files and trees it opens safely; never device nodes) and libvirt's own
    # SELinux driver (what it labels at start and hotplug). label_plan decides who does, per guest.
    svirtd_labels: bool = True
    libvirt_labels: bool = True
    # The definition's per-device <seclabel model='selinux'>: relabel='no' (hands off), or its own label.
    relabel: bool = True
    label: str | None = None
    # The <driver type> of a top image that names no <backingStore>: its backing chain is probed from
    # the image header (as libvirt does when qemu starts). '' when the chain is given or not probed.
    probe_format: str = ""
    backing: bool = False  # a layer below a disk's top image


class Applier(enum.StrEnum):
    """Who writes a resource's label (decided per guest in label_plan)."""

    SVIRTD = "svirtd"  # svirtd labels it: when isolating, from the libvirt hook, on runtime events
    LIBVIRT = "libvirt"  # libvirt's SELinux driver labels it with svirtd's label while the guest runs
    NOBODY = "nobody"  # not labeled; the reason says why


class ResourceStatus(enum.StrEnum):
    LABELED = "labeled"  # on disk label equals the expected one
    DRIFTED = "drifted"  # we labeled it, somebody changed it since
    ABSENT = "absent"  # optional resource not present (yet)
    UNLABELABLE = "unlabelable"  # storage cannot hold labels: isolation lost
    NOT_RELABELED = "not-relabeled"  # unhandled class, see note
    PENDING = "pending"  # a relabel is in progress
    DEFERRED = "deferred"  # libvirt's SELinux driver labels it when the guest starts
    NOT_OBSERVED = "not-observed"  # labeled by libvirt, but nothing on the host to read it from
    NOT_RESPONDING = "not-responding"  # its storage does not answer (svirtd asks it again later)


class ResourceState(BaseModel):
    """A resource as svirtd sees it: what it should carry and what it carries."""

    model_config = ConfigDict(frozen=True)

    path: str
    device: str
    kind: ResourceKind
    rclass: ResourceClass
    expected: str
    actual: str
    status: ResourceStatus
    note: str = ""
    applier: Applier = Applier.SVIRTD


class GuestState(enum.StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    SHUTOFF = "shutoff"
    OTHER = "other"
    UNKNOWN = "unknown"  # libvirtd not reachable


class Origin(enum.StrEnum):
    AUTO = "auto"  # confined automatically because libvirt defined it
    API = "api"  # somebody called Isolate


class Assignment(BaseModel):
    """A guest's binding in the MCS allocation table."""

    model_config = ConfigDict(frozen=True)

    uuid: str
    name: str
    level: Level
    profile: str
    origin: Origin
    state: GuestState = GuestState.UNKNOWN
    created: float
    updated: float
    note: str = ""  # e.g. a conflict that was resolved by re-mapping


def canonical_uuid(text: str) -> str:
    """Canonical lower-case 8-4-4-4-12 form; ValueError if text is not a UUID."""
    return str(uuidlib.UUID(text.strip()))


_UUIDISH = re.compile(r"^[0-9A-Fa-f{}-]{32,40}$")


def looks_like_uuid(text: str) -> bool:
    """True when the caller evidently meant a UUID (so a bad one is an error, not a name)."""
    return bool(_UUIDISH.match(text)) and sum(c in "0123456789abcdefABCDEF" for c in text) >= 30
