"""Which levels a guest already claims, whatever the source (pure).

libvirt and go-selinux rebuild their tables only from running processes, so a guest with a static
label that is not running, a copied definition or a copied image can silently share another guest's
categories. svirtd gathers every claim: the domain's static seclabel, svirtd's own metadata (identity
that travelled with the guest), the labels of its running qemu, and the labels already on its
private resources. The manager keeps the first claim that is free and re-maps on a conflict.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Iterable
from dataclasses import dataclass

from .models import Context, Level
from .policy import LabelSpec
from .resources import DomainSpec


class LevelSource(enum.StrEnum):
    STATIC = "static seclabel"
    METADATA = "svirtd metadata"
    RUNNING = "running qemu label"
    RESOURCE = "label on its resources"


@dataclass(frozen=True)
class LevelClaim:
    level: Level
    source: LevelSource


@functools.lru_cache(maxsize=4096)  # the same few contexts repeat in every audit record of a flood
def pair_of(context_text: str) -> Level | None:
    """The guest level in a context, or None when it is not a pair (s0, a range, a DAC label...)."""
    try:
        return _level(Context.parse(context_text).level)
    except ValueError:
        return None


def level_claims(domain: DomainSpec, spec: LabelSpec, running_labels: Iterable[str] = (),
                 resource_labels: Iterable[str] = ()) -> list[LevelClaim]:
    """Claims in priority order, each level once. Only labels of svirt's own types count for running
    processes and resources: an unrelated label that happens to carry a pair is not a guest identity."""
    claims: list[LevelClaim] = []

    def add(level: Level | None, source: LevelSource) -> None:
        if level is not None and all(c.level != level for c in claims):
            claims.append(LevelClaim(level, source))

    # What runs comes first: svirtd never takes a guest's files away from under its qemu.
    process_types = spec.process_types
    for label in running_labels:
        if _type_of(label) in process_types:
            add(pair_of(label), LevelSource.RUNNING)
    for sec in domain.seclabels:
        if sec.type == "static" and sec.label:
            add(pair_of(sec.label), LevelSource.STATIC)
    # A hand-edited, unparsable metadata level is ignored: the guest then gets a fresh pair.
    add(_level(domain.svirt_metadata.get("level", "")), LevelSource.METADATA)
    for label in resource_labels:
        if _type_of(label) == spec.image.type:
            add(pair_of(label), LevelSource.RESOURCE)
    return claims


def _level(text: str) -> Level | None:
    try:
        return Level.parse(text)
    except ValueError:
        return None


def _type_of(label: str) -> str | None:
    try:
        return Context.parse(label).type
    except ValueError:
        return None
