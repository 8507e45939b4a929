"""Issue 17: guest groups. Members' pairs hold the group's category; nobody else's ever does."""

from __future__ import annotations

import time
import uuid as uuidlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from svirtd.allocator import CategorySpace, PairAllocator
from svirtd.config import Config
from svirtd.errors import InvalidArgument, LabelSpaceExhausted
from svirtd.label_plan import target_label
from svirtd.level_book import LevelBook
from svirtd.level_claims import LevelClaim, LevelSource
from svirtd.models import Assignment, Level, Origin, Resource, ResourceClass, ResourceKind
from svirtd.policy import LabelSpec
from svirtd.store import Store

CFG = Config.model_validate({"categories": "c0.c9", "groups": {"build": {"category": "c9", "members": ["b1", "b2"]}}})
SPEC = LabelSpec.from_context_files("system_u:system_r:svirt_t:s0\n",
                                    "system_u:object_r:svirt_image_t:s0\nsystem_u:object_r:virt_content_t:s0\n")


@pytest.fixture
def book(tmp_path: Path) -> Iterator[LevelBook]:
    store = Store(tmp_path / "state.db")
    yield LevelBook(store, PairAllocator(CategorySpace(CFG.category_set, CFG.excluded_from_pairs)))
    store.close()


def record(book: LevelBook, level: Level) -> str:
    uuid, now = str(uuidlib.uuid4()), time.time()
    book.store.insert_assignment(Assignment(uuid=uuid, name="g", level=level, profile="default", origin=Origin.API,
                                            created=now, updated=now))
    return uuid


def test_config_takes_group_categories_out_of_automatic_pairs() -> None:
    assert CFG.excluded_from_pairs == frozenset({9})
    assert CFG.group_of("some-uuid", "b2") is not None and CFG.group_of("x", "web") is None
    for bad in ({"a": {"category": "c20", "members": ["x"]}},  # outside the range
                {"a": {"category": "c1,c2", "members": ["x"]}},  # one category per group
                {"a": {"category": "c1", "members": []}},
                {"a": {"category": "c1", "members": ["x"]}, "b": {"category": "c1", "members": ["y"]}},
                {"a": {"category": "c1", "members": ["x"]}, "b": {"category": "c2", "members": ["x"]}}):
        with pytest.raises(ValueError):
            Config.model_validate({"categories": "c0.c9", "groups": bad})
    with pytest.raises(ValueError, match="not supported with"):  # the etcd table knows no group categories
        Config.model_validate({"groups": {"a": {"category": "c1", "members": ["x"]}},
                               "cluster": {"backend": "etcd", "endpoints": ["http://127.0.0.1:2379"]}})


def test_members_hold_the_group_category_with_distinct_partners_and_others_never_do(book: LevelBook) -> None:
    members = []
    for _ in range(9):  # every partner category c0..c8 once
        level, _note = book.choose(str(uuidlib.uuid4()), [], group=9)
        record(book, level)
        members.append(level)
    assert all(9 in m.pair for m in members) and len(set(members)) == 9
    with pytest.raises(LabelSpaceExhausted):
        book.choose(str(uuidlib.uuid4()), [], group=9)
    for _ in range(36):  # every automatic pair of c0..c8
        level, _ = book.choose(str(uuidlib.uuid4()), [])
        assert 9 not in level.pair
        record(book, level)


def test_a_member_keeps_a_claim_with_the_group_category_and_drops_one_without(book: LevelBook) -> None:
    uuid = str(uuidlib.uuid4())
    level, note = book.choose(uuid, [LevelClaim(Level(low=1, high=9), LevelSource.METADATA)], group=9)
    assert level == Level(low=1, high=9) and note == ""
    other = str(uuidlib.uuid4())
    level, note = book.choose(other, [LevelClaim(Level(low=1, high=2), LevelSource.METADATA)], group=9)
    assert 9 in level.pair and "does not hold its group's category c9" in note
    # A non-member's claim on a group pair lies outside the automatic space: a fresh pair instead.
    level, note = book.choose(str(uuidlib.uuid4()), [LevelClaim(Level(low=3, high=9), LevelSource.METADATA)])
    assert 9 not in level.pair and "outside the categories" in note


def test_only_a_member_may_name_the_group_level_on_a_device() -> None:
    res = Resource(path="/srv/g.img", device="vdb", kind=ResourceKind.FILE, rclass=ResourceClass.SHARED,
                   label="system_u:object_r:svirt_image_t:s0:c9")
    assert target_label(res, Level(low=1, high=9), SPEC, group=9) == "system_u:object_r:svirt_image_t:s0:c9"
    with pytest.raises(InvalidArgument):
        target_label(res, Level(low=1, high=2), SPEC, group=None)
    with pytest.raises(InvalidArgument):  # its own partner category alone is not a group's
        target_label(res.model_copy(update={"label": "system_u:object_r:svirt_image_t:s0:c1"}),
                     Level(low=1, high=9), SPEC, group=9)
