from __future__ import annotations

import pytest

from svirtd.models import (
    Context,
    Level,
    McsLevel,
    canonical_uuid,
    format_categories,
    looks_like_uuid,
    parse_categories,
)


def test_level_round_trip_and_order() -> None:
    assert str(Level.parse("s0:c7,c3")) == "s0:c3,c7"
    assert Level.parse("s0:c1,c2").pair == (1, 2)


@pytest.mark.parametrize("bad", ["s0", "s0:c1", "s0:c1,c1", "s1:c1,c2", "s0:c1,c2,c3", "s0:c0.c5", "s0:c1,c1024",
                                 "c1,c2", "s0:c-1,c2"])
def test_level_refuses_anything_but_a_pair(bad: str) -> None:
    with pytest.raises(ValueError):
        Level.parse(bad)


def test_categories_ranges() -> None:
    assert parse_categories("c0.c3,c7") == frozenset({0, 1, 2, 3, 7})
    assert format_categories(frozenset({0, 1, 2, 3, 7, 9, 10})) == "c0.c3,c7,c9,c10"
    with pytest.raises(ValueError):
        parse_categories("c5.c2")


def test_mcs_dominance() -> None:
    big = McsLevel.parse("s0:c0.c1023")
    pair = McsLevel.parse("s0:c1,c2")
    assert big.dominates(pair) and not pair.dominates(big)
    assert not McsLevel.parse("s0:c1,c3").dominates(pair)


def test_context_parse_keeps_the_level_text() -> None:
    ctx = Context.parse("system_u:object_r:svirt_image_t:s0")
    assert str(ctx.with_level(Level(low=4, high=9))) == "system_u:object_r:svirt_image_t:s0:c4,c9"
    assert Context.parse("system_u:system_r:svirtd_t:s0-s0:c0.c1023").mcs == McsLevel.parse("s0")
    with pytest.raises(ValueError):
        Context.parse("svirt_t:s0")


def test_uuid_helpers() -> None:
    u = "6F1A0B2C-1111-4222-8333-444455556666"
    assert looks_like_uuid(u) and canonical_uuid(u) == u.lower()
    assert looks_like_uuid("6f1a0b2c-1111-4222-8333-44445555666z") is False  # a name, not a UUID
    assert looks_like_uuid("6f1a0b2c-1111-4222-8333-4444555566") is True  # evidently meant, but malformed
    with pytest.raises(ValueError):
        canonical_uuid("6f1a0b2c-1111-4222-8333-4444555566")
    assert not looks_like_uuid("web01")
