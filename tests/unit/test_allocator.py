"""The pair allocator: pairs only, exact picks, immediate exhaustion, no leaks (pure, no I/O)."""

from __future__ import annotations

import random

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from svirtd.allocator import CategorySpace, PairAllocator
from svirtd.errors import LabelSpaceExhausted
from svirtd.models import Level


def test_index_and_level_are_inverse_over_a_whole_space() -> None:
    space = CategorySpace(range(12), reserved=[0, 5])
    seen = set()
    for index in range(space.total):
        level = space.level_at(index)
        assert level.low < level.high
        assert 0 not in level.pair and 5 not in level.pair
        assert space.index_of(level) == index
        seen.add(level.pair)
    assert len(seen) == space.total == 10 * 9 // 2


def test_full_refpolicy_space_has_523776_pairs() -> None:
    assert CategorySpace(range(1024)).total == 523_776


def test_small_range_exhausts_exactly_and_recovers_after_a_release() -> None:
    alloc = PairAllocator(CategorySpace(range(10), reserved=[0]), random.Random(1))
    assert alloc.total == 36
    got = [alloc.allocate() for _ in range(36)]
    assert len({lv.pair for lv in got}) == 36
    assert alloc.free == 0
    with pytest.raises(LabelSpaceExhausted, match="widen 'categories'"):
        alloc.allocate()
    alloc.release(got[7])
    assert alloc.allocate() == got[7]
    assert alloc.free == 0


def test_reserve_outside_space_is_reported_not_tracked() -> None:
    alloc = PairAllocator(CategorySpace(range(10), reserved=[0]))
    assert alloc.reserve(Level(low=0, high=3)) is False  # uses the reserved c0
    assert alloc.reserve(Level(low=3, high=500)) is False  # outside the range
    assert alloc.free == alloc.total
    assert alloc.reserve(Level(low=3, high=4)) is True
    with pytest.raises(ValueError, match="already in use"):
        alloc.reserve(Level(low=3, high=4))
    alloc.release(Level(low=3, high=4))
    with pytest.raises(ValueError, match="not in use"):
        alloc.release(Level(low=3, high=4))


def test_allocation_never_returns_a_reserved_pair() -> None:
    alloc = PairAllocator(CategorySpace(range(6)), random.Random(7))
    taken = {Level(low=0, high=1), Level(low=2, high=5)}
    for lv in taken:
        alloc.reserve(lv)
    rest = {alloc.allocate() for _ in range(alloc.free)}
    assert not rest & taken
    assert len(rest) == 15 - 2


class AllocatorMachine(RuleBasedStateMachine):
    """Random isolate/release/reserve/restart sequences: never a duplicate, never a leak."""

    def __init__(self) -> None:
        super().__init__()
        self.space = CategorySpace(range(8), reserved=[3])
        self.alloc = PairAllocator(self.space, random.Random(0))
        self.held: set[tuple[int, int]] = set()

    @rule()
    def isolate(self) -> None:
        if self.alloc.free == 0:
            with pytest.raises(LabelSpaceExhausted):
                self.alloc.allocate()
            return
        level = self.alloc.allocate()
        assert level.pair not in self.held, "duplicate pair handed out"
        assert 3 not in level.pair
        self.held.add(level.pair)

    @precondition(lambda self: bool(self.held))
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        pair = data.draw(st.sampled_from(sorted(self.held)))
        self.alloc.release(Level(low=pair[0], high=pair[1]))
        self.held.discard(pair)

    @rule(low=st.integers(0, 7), high=st.integers(0, 7))
    def reserve_static(self, low: int, high: int) -> None:
        if low >= high:
            return
        level = Level(low=low, high=high)
        if level.pair in self.held:
            with pytest.raises(ValueError):
                self.alloc.reserve(level)
        elif self.alloc.reserve(level):
            self.held.add(level.pair)
        else:
            assert 3 in level.pair

    @rule()
    def restart(self) -> None:
        """A restart (or crash): rebuild from the persisted set only."""
        self.alloc = PairAllocator(self.space, random.Random(len(self.held)))
        for low, high in self.held:
            assert self.alloc.reserve(Level(low=low, high=high))

    @invariant()
    def free_plus_used_is_total(self) -> None:
        assert self.alloc.free + len(self.held) == self.alloc.total
        assert self.alloc.used == len(self.held)

    @invariant()
    def held_pairs_are_not_free(self) -> None:
        for low, high in self.held:
            assert not self.alloc.is_free(Level(low=low, high=high))


TestAllocatorMachine = AllocatorMachine.TestCase
TestAllocatorMachine.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)
