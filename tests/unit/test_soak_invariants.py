"""The soak's invariants (soak/invariants.py), pure: each one fails on the facts that break it."""

from __future__ import annotations

from soak.invariants import ClaimFact, Definition, Facts, FileFact, Row, check, journal_owner

A, B = "11111111-1111-1111-1111-111111111111", "22222222-2222-2222-2222-222222222222"
IMG = "system_u:object_r:svirt_image_t:"


def facts(**over: object) -> Facts:
    base: dict[str, object] = {
        "rows": [Row(A, "a", "s0:c1,c2", "active")],
        "claims": [ClaimFact(A, "/i/a.img", "disk", 1, 10)],
        "definitions": [Definition(A, "a", frozenset({"/i/a.img"}), None),
                        Definition(B, "b", frozenset({"/i/b.img"}), None)],
        "files": [FileFact("/i/a.img", None, IMG + "s0:c1,c2"), FileFact("/i/b.img", None, None)],
        "journals": [],
        "reasons": {B: "released by an admin"},
    }
    base.update(over)
    return Facts(**base)  # type: ignore[arg-type]


def test_consistent_facts_are_clean() -> None:
    assert check(facts()).clean


def test_a_pair_held_twice_is_found_in_table_definitions_and_on_disk() -> None:
    rows = [Row(A, "a", "s0:c1,c2", "active"), Row(B, "b", "s0:c1,c2", "active")]
    assert check(facts(rows=rows, reasons={})).counts()["duplicate_pairs"] >= 1
    defs = [Definition(A, "a", frozenset({"/i/a.img"}), "s0:c1,c2"), Definition(B, "b", frozenset(), "s0:c1,c2")]
    assert check(facts(definitions=defs)).counts()["duplicate_pairs"] == 1
    # b's file carries a's pair although b does not use a's files.
    files = [FileFact("/i/a.img", None, IMG + "s0:c1,c2"), FileFact("/i/b.img", None, IMG + "s0:c1,c2")]
    report = check(facts(files=files))
    assert report.counts()["duplicate_pairs"] == 1 and report.counts()["lost_originals"] == 1


def test_a_definition_disagreeing_with_the_table_is_found() -> None:
    defs = [Definition(A, "a", frozenset({"/i/a.img"}), "s0:c3,c4"), Definition(B, "b", frozenset(), None)]
    assert check(facts(definitions=defs)).duplicate_pairs


def test_a_released_file_must_carry_its_original_and_an_isolated_one_its_pair() -> None:
    files = [FileFact("/i/a.img", None, IMG + "s0:c1,c2"), FileFact("/i/b.img", "x:y:z_t:s0", None)]
    assert check(facts(files=files)).counts()["lost_originals"] == 1
    files = [FileFact("/i/a.img", None, None), FileFact("/i/b.img", None, None)]
    assert check(facts(files=files)).counts()["mislabeled"] == 1


def test_a_defined_guest_not_isolated_needs_a_reason() -> None:
    assert check(facts(reasons={})).unconfined_without_reason == [f"b ({B})"]


def test_orphans_rows_claims_and_journals() -> None:
    rows = [Row(A, "a", "s0:c1,c2", "releasing")]
    assert check(facts(rows=rows, reasons={A: "x", B: "y"})).orphans
    gone = [Definition(B, "b", frozenset({"/i/b.img"}), None)]
    assert check(facts(definitions=gone)).orphans  # a row of a guest libvirt does not have
    claims = [ClaimFact(B, "/i/b.img", "disk", 1, 11)]
    assert check(facts(claims=claims)).orphans
    assert check(facts(journals=[f"{A}-1-10.0001.root"])).orphans  # a's disk is no tree
    tree = [ClaimFact(A, "/i/t", "tree", 1, 12)]
    assert check(facts(claims=tree, journals=[f"{A}-1-12.0001.root", "shared-1-12.0002.0"])).clean
    assert check(facts(journals=["garbage"])).orphans


def test_journal_owner_parses_what_relabel_writes() -> None:
    assert journal_owner(f"{A}-2049-77.0003.1") == (A, 2049, 77)
    assert journal_owner("shared-5-6.0001.root") == ("shared", 5, 6)
    assert journal_owner("nonsense") is None
