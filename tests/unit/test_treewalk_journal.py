"""Review of issue 13, findings 4 and 7: what the tree journal reader accepts as an original label."""

from __future__ import annotations

from pathlib import Path

from svirtd.treewalk import JOURNAL_HEADER, journal_records, read_journals

LABEL = b"system_u:object_r:user_tmp_t:s0"


def test_a_torn_last_record_is_ignored() -> None:
    whole = JOURNAL_HEADER + b"a\0" + LABEL + b"\0" + b"1:2\0" + b"b\0\0" + b"1:3\0"
    assert list(journal_records(whole)) == [(b"a", LABEL, (1, 2)), (b"b", b"", (1, 3))]
    record = b"c\0" + LABEL + b"\0" + b"1:4\0"
    for cut in range(1, len(record)):  # cut anywhere inside a third record: it never counts
        assert list(journal_records(whole + record[:cut])) == [(b"a", LABEL, (1, 2)), (b"b", b"", (1, 3))], cut
    for cut in range(1, len(JOURNAL_HEADER) + 1):  # or inside the header: nothing counts
        assert list(journal_records((whole + record)[:cut])) == [], cut


def test_a_label_that_is_not_a_context_or_an_inode_that_does_not_parse_is_ignored() -> None:
    mls = b"user_u:role_r:type_t:s0-s0:c0.c1023"
    data = (JOURNAL_HEADER + b"a\0system\0" + b"1:2\0" + b"b\0" + LABEL + b"\0" + b"1:3\0"
            + b"c\0" + mls + b"\0" + b"1:4\0" + b"\0x:y:z\0" + b"1:5\0" + b"d\0" + LABEL + b"\0" + b"x:6\0")
    assert list(journal_records(data)) == [(b"b", LABEL, (1, 3)), (b"c", mls, (1, 4))]


def test_journals_of_an_older_svirtd_are_still_read() -> None:
    """Format 1: (relpath, original) records, no header, no inode."""
    assert list(journal_records(b"a\0" + LABEL + b"\0" + b"b\0\0" + b"c\0sys")) == [(b"a", LABEL, None),
                                                                                  (b"b", b"", None)]


def test_the_oldest_run_wins_and_runs_ignore_each_others_tears(tmp_path: Path) -> None:
    (tmp_path / "t.0001.0").write_bytes(b"a\0" + LABEL + b"\0" + b"b\0sys")
    (tmp_path / "t.0002.0").write_bytes(JOURNAL_HEADER + b"a\0\0" + b"1:2\0" + b"b\0\0" + b"1:3\0")
    assert read_journals(tmp_path / "t") == {b"a": (LABEL, None), b"b": (b"", (1, 3))}
    assert read_journals(tmp_path / "t", run=2) == {b"a": (b"", (1, 2)), b"b": (b"", (1, 3))}
