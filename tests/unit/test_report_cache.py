"""Query's cache of what it compares the files with is dropped by every change it depends on (real
SQLite store): the guest's row, its claims, its definition, the config -- and not by another guest's
change (a burst of isolations)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from svirtd import report_cache
from svirtd.models import Level, ResourceClass
from svirtd.report_cache import ReportBasis, ReportCache
from svirtd.store import STAMP_BUCKETS, Store
from tests.unit.test_store import assignment, claim


def basis_from(store: Store, uuid: str, depends_on: tuple[object, ...]) -> ReportBasis:
    return ReportBasis(depends_on=depends_on, claims=tuple(store.claims_for(uuid)), decisions=(),
                       process_label="p", image_label="i")


def test_a_row_is_read_again_after_any_committed_change(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    store.insert_assignment(assignment("u1", Level(low=1, high=2), "web01"))
    cache = ReportCache(store)
    first = cache.assignment("u1")
    assert first is not None and cache.assignment("u1") is first  # kept while nothing changes
    store.update_assignment("u1", name="web02")
    renamed = cache.assignment("u1")
    assert renamed is not None and renamed.name == "web02"
    store.insert_assignment(assignment("u2", Level(low=3, high=4)))  # another guest's change keeps it
    store.put_claims([claim("u2", "/images/b.img", ResourceClass.PRIVATE, ino=8)])
    assert cache.assignment("u1") is renamed
    store.put_claims([claim("u1", "/images/a.img", ResourceClass.PRIVATE)])  # its own claims drop it
    assert cache.assignment("u1") is not renamed
    store.delete_assignment("u1")
    assert cache.assignment("u1") is None
    assert cache.assignment("nobody") is None


def test_guests_sharing_a_stamp_bucket_see_each_others_changes_and_nothing_stale(tmp_path: Path) -> None:
    """Stamps are kept per hash bucket: a collision only drops a kept row more often."""
    store = Store(tmp_path / "state.db")
    mine = "u1"
    other = next(f"u{i}" for i in range(2, 100_000)
                 if hash(f"u{i}") & (STAMP_BUCKETS - 1) == hash(mine) & (STAMP_BUCKETS - 1))
    store.insert_assignment(assignment(mine, Level(low=1, high=2)))
    cache = ReportCache(store)
    first = cache.assignment(mine)
    store.insert_assignment(assignment(other, Level(low=3, high=4)))
    again = cache.assignment(mine)
    assert again is not first and again == first
    store.update_assignment(mine, note="n")
    now = cache.assignment(mine)
    assert now is not None and now.note == "n"


def test_what_is_kept_is_bounded_however_many_guests_are_asked_about(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(report_cache, "KEPT", 8)
    store = Store(tmp_path / "state.db")
    cache = ReportCache(store)
    for i in range(50):  # rows or none: a caller asking for random UUIDs must not grow svirtd
        store.insert_assignment(assignment(f"g{i}", Level(low=1, high=i + 2)))
        a = cache.assignment(f"g{i}")
        cache.basis(f"g{i}", (a,), lambda: basis_from(store, f"g{i}", (a,)))  # noqa: B023 - called at once
        cache.assignment(f"nobody{i}")
    assert max(len(cache._rows), len(cache._bases)) <= 8
    a = cache.assignment("g49")
    assert a is not None and a.level == Level(low=1, high=51)
    # The guest asked about again and again stays while others come and go (least recently asked goes).
    hot = cache.assignment("g0")
    for i in range(1, 30):
        assert cache.assignment("g0") is hot
        cache.assignment(f"g{i}")
    assert cache.assignment("g0") is hot


def test_a_change_made_by_another_thread_is_seen(tmp_path: Path) -> None:
    """Writes commit in worker threads (relabel transactions): the generation moves after the commit."""
    store = Store(tmp_path / "state.db")
    store.insert_assignment(assignment("u1", Level(low=1, high=2)))
    cache = ReportCache(store)
    assert cache.assignment("u1") is not None
    writer = threading.Thread(target=store.update_assignment, args=("u1",), kwargs={"note": "from a thread"})
    writer.start()
    writer.join()
    a = cache.assignment("u1")
    assert a is not None and a.note == "from a thread"


def test_the_basis_is_derived_again_when_claims_or_what_it_depends_on_change(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    store.insert_assignment(assignment("u1", Level(low=1, high=2)))
    cache = ReportCache(store)
    derived: list[ReportBasis] = []
    definition, config = object(), object()

    def basis(*depends_on: object) -> ReportBasis:
        def derive() -> ReportBasis:
            derived.append(basis_from(store, "u1", depends_on))
            return derived[-1]
        return cache.basis("u1", depends_on, derive)

    a = cache.assignment("u1")
    first = basis(a, definition, config, False)
    assert basis(a, definition, config, False) is first and len(derived) == 1
    store.put_claims([claim("u1", "/images/a.img", ResourceClass.PRIVATE)])  # a claim: derived again
    a = cache.assignment("u1")
    with_claim = basis(a, definition, config, False)
    assert len(derived) == 2 and [c.path for c in with_claim.claims] == ["/images/a.img"]
    basis(a, object(), config, False)  # a new definition
    basis(a, object(), object(), False)  # a reloaded config
    before = len(derived)
    basis(a, derived[-1].depends_on[1], derived[-1].depends_on[2], True)  # libvirt's driver appeared
    assert len(derived) == before + 1 == 5
    store.set_claims_phase("u1", ["/images/a.img"], "restoring")
    a = cache.assignment("u1")
    again = basis(a, definition, config, False)
    assert again.claims[0].phase == "restoring"


def test_query_variants_follow_every_change_of_a_resource_or_the_row() -> None:
    """The marshalled variants are kept per value: a label read differently, or a renamed guest, is a
    new value and gets its own variants; an unchanged one gets the same objects again."""
    from svirtd.dbus_iface import report_to_dbus
    from svirtd.manager import GuestReport
    from svirtd.models import ResourceKind, ResourceState, ResourceStatus

    def report(name: str, actual: str) -> GuestReport:
        res = ResourceState(path="/images/a.img", device="disk vda", kind=ResourceKind.FILE,
                            rclass=ResourceClass.PRIVATE, expected="x", actual=actual,
                            status=ResourceStatus.LABELED if actual == "x" else ResourceStatus.DRIFTED)
        a = assignment("u1", Level(low=1, high=2), name).model_copy(update={"created": 1.0, "updated": 2.0})
        return GuestReport(assignment=a, process_label="p", image_label="x", resources=(res,), isolation="ok")

    first = report_to_dbus(report("web01", "x"))
    again = report_to_dbus(report("web01", "x"))
    assert again["resources"].value[0] is first["resources"].value[0] and again["name"] is first["name"]
    drifted = report_to_dbus(report("web01", "y"))["resources"].value[0]
    assert (drifted["actual"].value, drifted["status"].value) == ("y", "drifted")
    assert report_to_dbus(report("web02", "x"))["name"].value == "web02"
