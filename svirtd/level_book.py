"""Who holds which level: the allocation table (isolated guests, persisted) plus the levels guests svirtd
does not isolate run with or carry in their definitions ("foreign": static labels, running qemu labels,
a released guest's definition until its label is gone). Every level in use anywhere is reserved in the
allocator, so no pair is ever handed to two guests.

No I/O but the store's reads; called on the event loop only (no locks of its own).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable
from typing import Protocol

from .allocator import PairAllocator
from .denials import GuestRef
from .errors import LabelSpaceExhausted
from .level_claims import LevelClaim, LevelSource
from .logsetup import guest_fields
from .models import Level
from .store import Store

log = logging.getLogger(__name__)


class ClusterView(Protocol):
    """[cluster] backend = "etcd" (issue 16): who holds a pair anywhere in the cluster, as last seen."""

    def holder(self, level: Level, uuid: str) -> str | None: ...


class LevelBook:
    def __init__(self, store: Store, allocator: PairAllocator) -> None:
        self.store = store
        self.allocator = allocator
        self._foreign: dict[str, tuple[str, Level]] = {}  # uuid -> (name, level)
        self.cluster: ClusterView | None = None  # set by cluster_book with the etcd backend
        self._rng = random.SystemRandom()

    def choose(self, uuid: str, claims: Iterable[LevelClaim], group: int | None = None) -> tuple[Level, str]:
        """The first level the guest already claims that nobody else holds and the configuration allows,
        else a fresh pair. A claim held by another guest (a copied definition or image) is a conflict:
        the newcomer gets a new pair and the note says which guest held the old one. group: the
        category of the guest's group, which its level must hold (see choose_in_group)."""
        if group is not None:
            return self.choose_in_group(uuid, claims, group)

        def unusable(claim: LevelClaim) -> str | None:
            # Only an admin's explicit static label, or the label a qemu already runs with, may use
            # reserved categories or lie outside the range.
            if claim.source in (LevelSource.STATIC, LevelSource.RUNNING) or self.allocator.in_space(claim.level):
                return None
            return "lies outside the categories svirtd may hand out (categories / reserved_categories)"
        level, conflicts = self._first_claim(uuid, claims, unusable)
        if level is None:
            level = self.allocator.allocate()
        return level, remap_note(conflicts, level)

    def choose_in_group(self, uuid: str, claims: Iterable[LevelClaim], group: int) -> tuple[Level, str]:
        """A group member's level: {cG, cX}, cG the group's category (no automatic pair holds it: it is
        outside the allocator's space), cX any automatic category no other member pairs with cG. A
        member's pair and a non-member's never dominate each other (the member's holds cG, the other's
        does not; the other's holds a category the member's lacks, as pairs are distinct), and two
        members differ in cX: they stay isolated from each other; only s0:cG is common to them."""
        level, conflicts = self._first_claim(uuid, claims, lambda claim: None if group in claim.level.pair
                                             else f"does not hold its group's category c{group}")
        if level is not None:
            return level, remap_note(conflicts, level)
        for other in self._rng.sample(self.allocator.space.categories, len(self.allocator.space.categories)):
            level = Level(low=min(group, other), high=max(group, other))
            if self.holder_of(level, uuid) is None:
                self.take(level, uuid)
                return level, remap_note(conflicts, level)
        raise LabelSpaceExhausted(f"every pair with group category c{group} is in use: the group has as many "
                                  "members as there are automatic categories")

    def _first_claim(self, uuid: str, claims: Iterable[LevelClaim],
                     unusable: Callable[[LevelClaim], str | None]) -> tuple[Level | None, list[str]]:
        """The first claim that is usable and free, taken for uuid; and why the ones before it were not."""
        conflicts: list[str] = []
        for claim in claims:
            why = unusable(claim)
            if why is not None:
                conflicts.append(f"{claim.source.value} {claim.level} {why}")
                continue
            holder = self.holder_of(claim.level, uuid)
            if holder is None:
                self.take(claim.level, uuid)
                return claim.level, conflicts
            conflicts.append(f"{claim.source.value} {claim.level} is held by guest {holder}")
        return None, conflicts

    def guest_at(self, level: Level) -> GuestRef | None:
        """The guest (isolated, or running with a foreign label) that holds a level."""
        found = self.store.guest_at_level(level)
        if found is not None:
            return GuestRef(*found)
        for uuid, (name, held) in self._foreign.items():
            if held == level:
                return GuestRef(uuid, f"{name} (not isolated by svirtd)")
        return None

    def holder_of(self, level: Level, uuid: str) -> str | None:
        """Name of the guest (other than uuid) holding level, or None when it is free for uuid."""
        owner = self.store.by_level(level)
        if owner is not None and owner.uuid != uuid:
            return f"{owner.name} ({owner.uuid})"
        for other, (name, held) in self._foreign.items():
            if held == level and other != uuid:
                return f"{name} ({other}, not isolated by svirtd)"
        if self.cluster is not None:  # issue 16: etcd's binding of the pair names the holder, here or elsewhere
            return self.cluster.holder(level, uuid)
        mine = self._foreign.get(uuid)
        if owner is None and (mine is None or mine[1] != level) and self.allocator.in_space(level) \
                and not self.allocator.is_free(level):
            return "an unknown holder (the pair is marked in use)"  # only if the table were inconsistent
        return None

    def take(self, level: Level, uuid: str) -> None:
        """Reserve level for uuid; a foreign reservation of its own simply changes hands."""
        mine = self._foreign.pop(uuid, None)
        if mine is not None and mine[1] == level:
            return
        if mine is not None:
            self.allocator.release(mine[1])
        self.allocator.reserve(level)

    def give_back(self, level: Level) -> None:
        """An isolated guest's level is free again."""
        self.allocator.release(level)

    def hold_foreign(self, uuid: str, name: str, level: Level) -> bool:
        """Keep level reserved for a guest svirtd does not isolate (or no longer does). False when
        another guest holds it already (the two are then not isolated from each other)."""
        current = self._foreign.get(uuid)
        if current is not None and current[1] == level:
            return True
        if self.holder_of(level, uuid) is not None:
            log.warning("%s runs with %s, which another guest holds: the two are not isolated from each other",
                        name, level, extra=guest_fields(uuid, name))
            return False
        self.release_foreign(uuid)
        self.allocator.reserve(level)
        self._foreign[uuid] = (name, level)
        return True

    def hand_over(self, uuid: str, name: str, level: Level) -> None:
        """A released guest's level stays reserved as foreign (its definition or qemu may still carry it)."""
        self._foreign[uuid] = (name, level)

    def foreign_level(self, uuid: str) -> Level | None:
        held = self._foreign.get(uuid)
        return held[1] if held is not None else None

    def release_foreign(self, uuid: str) -> None:
        held = self._foreign.pop(uuid, None)
        if held is not None:
            self.allocator.release(held[1])

    def release_all_foreign(self) -> None:
        for uuid in list(self._foreign):
            self.release_foreign(uuid)


def remap_note(conflicts: list[str], level: Level) -> str:
    return f"re-mapped to {level}: {'; '.join(conflicts)}" if conflicts else ""
