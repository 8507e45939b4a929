"""Review of issue 13, finding 4: what the tree journal reader accepts as an original label."""

from __future__ import annotations

from pathlib import Path

from svirtd.treewalk import journal_records, read_journals

LABEL = b"system_u:object_r:user_tmp_t:s0"


def test_a_torn_last_record_is_ignored() -> None:
    whole = b"a\0" + LABEL + b"\0" + b"b\0\0"
    assert list(journal_records(whole)) == [(b"a", LABEL), (b"b", b"")]
    for cut in range(1, len(LABEL) + 3):  # cut anywhere inside a third record: it never counts
        torn = whole + (b"c\0" + LABEL + b"\0")[:cut]
        assert list(journal_records(torn)) == [(b"a", LABEL), (b"b", b"")], cut


def test_a_label_that_is_not_a_context_is_ignored() -> None:
    data = b"a\0system\0" + b"b\0" + LABEL + b"\0" + b"c\0user_u:role_r:type_t:s0-s0:c0.c1023\0" + b"\0x:y:z\0"
    assert list(journal_records(data)) == [(b"b", LABEL), (b"c", b"user_u:role_r:type_t:s0-s0:c0.c1023")]


def test_the_oldest_run_wins_and_runs_ignore_each_others_tears(tmp_path: Path) -> None:
    (tmp_path / "t.0001.0").write_bytes(b"a\0" + LABEL + b"\0" + b"b\0sys")
    (tmp_path / "t.0002.0").write_bytes(b"a\0\0b\0\0")
    assert read_journals(tmp_path / "t") == {b"a": LABEL, b"b": b""}
