"""The allocation table through the real SQLite store: random isolate/release/crash sequences.

A crash is modelled the only way that matters: the process state is gone and a new allocator is
rebuilt from what the database committed (Manager.load_table, as svirtd does at start).
"""

from __future__ import annotations

import random
import shutil
import sqlite3
import tempfile
import time
import uuid as uuidlib
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from svirtd.allocator import CategorySpace, PairAllocator
from svirtd.errors import LabelSpaceExhausted
from svirtd.manager import Manager
from svirtd.models import Assignment, Origin
from svirtd.store import Store

SPACE = CategorySpace(range(7), reserved=[2])  # 15 pairs: small enough to hit exhaustion often


class TableMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="svirtd-table-"))
        self.store = Store(self.dir / "state.db")
        self.alloc = PairAllocator(SPACE, random.Random(0))

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.dir)  # one per hypothesis example: hundreds a run otherwise

    @rule()
    def isolate(self) -> None:
        try:
            level = self.alloc.allocate()
        except LabelSpaceExhausted:
            assert self.store.count() == SPACE.total
            return
        now = time.time()
        self.store.insert_assignment(Assignment(uuid=str(uuidlib.uuid4()), name="g", level=level,
                                                profile="default", origin=Origin.API, created=now, updated=now))

    @precondition(lambda self: self.store.count() > 0)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        victims = sorted(u for u, _ in self.store.levels())
        uuid = data.draw(st.sampled_from(victims))
        a = self.store.get(uuid)
        assert a is not None
        self.store.begin_release(uuid, optout=True)
        self.store.delete_assignment(uuid)
        self.alloc.release(a.level)

    @precondition(lambda self: self.store.count() > 0)
    @rule()
    def duplicate_insert_is_refused(self) -> None:
        """A buggy caller handing out a used pair: the database refuses it."""
        _, level = next(self.store.levels())
        now = time.time()
        with pytest.raises(sqlite3.IntegrityError):
            self.store.insert_assignment(Assignment(uuid=str(uuidlib.uuid4()), name="dup", level=level,
                                                    profile="default", origin=Origin.API, created=now, updated=now))

    @rule()
    def crash_and_restart(self) -> None:
        self.store.close()
        self.store = Store(self.dir / "state.db")
        self.alloc = PairAllocator(SPACE, random.Random(self.store.count()))
        Manager.load_table(self.store, self.alloc)

    @invariant()
    def no_duplicate_and_no_leak(self) -> None:
        levels = [lv for _, lv in self.store.levels()]
        assert len(levels) == len(set(levels)), "duplicate pair in the table"
        assert self.alloc.free + len(levels) == self.alloc.total, "leaked or double-counted pair"
        assert all(not self.alloc.is_free(lv) for lv in levels)


TestTableMachine = TableMachine.TestCase
TestTableMachine.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
