"""The MCS pair allocator: pure, constant-time, exhaustion-proof.

libvirt and go-selinux draw two random categories and retry until the pair is unused: the cost grows
without bound as the table fills and the loop never ends once it is full. Here every pair of the
category space has an index (combinatorial numbering), and the free indices live in the front of a
permutation array; a pick is one random position in that prefix and a swap. Picking, reserving and
releasing are O(1) (O(log n) to decode an index), whatever the occupancy, and a full space is
reported at once.

No I/O here: the store persists assignments, and the manager replays them into an allocator at
start.
"""

from __future__ import annotations

import bisect
import random
from array import array
from collections.abc import Iterable

from .errors import LabelSpaceExhausted
from .models import Level, format_categories


class CategorySpace:
    """The categories automatic labels are drawn from: a range minus reserved categories."""

    def __init__(self, categories: Iterable[int], reserved: Iterable[int] = ()) -> None:
        wanted = set(categories)
        self.reserved = frozenset(reserved) & wanted
        self.categories: tuple[int, ...] = tuple(sorted(wanted - self.reserved))
        self._slot_of = {cat: i for i, cat in enumerate(self.categories)}
        n = len(self.categories)
        # _row_start[i]: index of the first pair whose lower category is categories[i].
        self._row_start = [i * n - i * (i + 1) // 2 for i in range(n)]
        self.total = n * (n - 1) // 2

    def describe(self) -> str:
        text = format_categories(frozenset(self.categories) | self.reserved)
        if self.reserved:
            text += f" minus reserved {format_categories(self.reserved)}"
        return text or "(empty)"

    def index_of(self, level: Level) -> int | None:
        """The pair's index, or None when the pair is outside this space."""
        i = self._slot_of.get(level.low)
        j = self._slot_of.get(level.high)
        if i is None or j is None:
            return None
        return self._row_start[i] + (j - i - 1)

    def level_at(self, index: int) -> Level:
        if not 0 <= index < self.total:
            raise IndexError(index)
        i = bisect.bisect_right(self._row_start, index) - 1
        j = i + 1 + (index - self._row_start[i])
        return Level(low=self.categories[i], high=self.categories[j])


class PairAllocator:
    """Which pairs of a CategorySpace are free; hands out, reserves and takes back pairs."""

    def __init__(self, space: CategorySpace, rng: random.Random | None = None) -> None:
        self.space = space
        self._rng = rng or random.SystemRandom()
        # _slots[:_free] are the free pair indices; _pos is the inverse permutation.
        self._slots = array("I", range(space.total))
        self._pos = array("I", range(space.total))
        self._free = space.total

    @property
    def total(self) -> int:
        return self.space.total

    @property
    def free(self) -> int:
        return self._free

    @property
    def used(self) -> int:
        return self.space.total - self._free

    def allocate(self) -> Level:
        """A free pair, chosen at random; LabelSpaceExhausted at once when there is none."""
        if self._free == 0:
            raise LabelSpaceExhausted(
                f"all {self.space.total} category pairs of {self.space.describe()} are in use. "
                "Release guests that no longer need isolation, or widen 'categories' / shrink "
                "'reserved_categories' in svirtd.conf and restart svirtd."
            )
        index = self._slots[self._rng.randrange(self._free)]
        self._hold(index)
        return self.space.level_at(index)

    def is_free(self, level: Level) -> bool:
        index = self.space.index_of(level)
        return index is not None and self._pos[index] < self._free

    def in_space(self, level: Level) -> bool:
        return self.space.index_of(level) is not None

    def reserve(self, level: Level) -> bool:
        """Mark a specific pair used. False when the pair lies outside the space (nothing to do:
        automatic picks can never produce it). ValueError when it is already used."""
        index = self.space.index_of(level)
        if index is None:
            return False
        if self._held(index):
            raise ValueError(f"{level} is already in use")
        self._hold(index)
        return True

    def release(self, level: Level) -> None:
        """Give a pair back. Pairs outside the space are ignored (they were never handed out)."""
        index = self.space.index_of(level)
        if index is None:
            return
        if not self._held(index):
            raise ValueError(f"{level} is not in use")
        self._unhold(index)

    # Who holds a pair: here, whoever reserved it. A subclass may count more holders (cluster_model).
    def _held(self, index: int) -> bool:
        return self._pos[index] >= self._free

    def _hold(self, index: int) -> None:
        self._take(index)

    def _unhold(self, index: int) -> None:
        self._give(index)

    def _give(self, index: int) -> None:
        self._swap(self._pos[index], self._free)
        self._free += 1

    def _take(self, index: int) -> None:
        self._free -= 1
        self._swap(self._pos[index], self._free)

    def _swap(self, a: int, b: int) -> None:
        slots, pos = self._slots, self._pos
        ia, ib = slots[a], slots[b]
        slots[a], slots[b] = ib, ia
        pos[ib], pos[ia] = a, b
