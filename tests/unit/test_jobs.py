"""Jobs' pure parts: progress arithmetic, throttling, the helper's progress lines, the progress bar;
and the helper's entry count on a real directory tree."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from svirtd.ctl_output import progress_line
from svirtd.jobs import Job, JobControl, ProgressLines, Throttle, fraction
from svirtd.treewalk import count_entries


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_fraction_is_zero_while_unknown_and_never_above_one() -> None:
    assert fraction(5, 0) == 0.0
    assert fraction(25, 100) == 0.25
    assert fraction(120, 100) == 1.0  # files created during the walk


def test_throttle_lets_one_event_through_per_interval() -> None:
    clock = Clock()
    t = Throttle(0.1, clock)
    assert t.wait() == 0.0 and t.ready()
    assert not t.ready() and abs(t.wait() - 0.1) < 1e-9
    clock.now += 0.04
    assert not t.ready() and abs(t.wait() - 0.06) < 1e-9
    clock.now += 0.06
    assert t.ready()
    sent = 0
    for _ in range(1000):  # 1 s of events, one every millisecond: 10 go out
        clock.now += 0.001
        sent += t.ready()
    assert sent == 10


def test_progress_lines_arrive_in_pieces_and_garbage_is_ignored() -> None:
    lines = ProgressLines()
    assert list(lines.feed(b"done 1")) == []
    assert list(lines.feed(b"2\ntotal 500\nbogus 3\ndone x\ndo")) == [("done", 12), ("total", 500)]
    assert list(lines.feed(b"ne 7\n")) == [("done", 7)]


def test_a_job_sums_its_walks_from_several_threads() -> None:
    changes: list[int] = []
    control = JobControl(cancellable=True, on_change=lambda: changes.append(1))
    first, second = control.walk(), control.walk()
    control.add(first, "total", 1000)

    def count(walk: int) -> None:
        for _ in range(500):
            control.add(walk, "done", 1)

    threads = [threading.Thread(target=count, args=(w,)) for w in (first, first, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert control.counts() == (1500, 1000)
    control.add(second, "total", 1000)
    job = Job(7, "isolate", "uuid", control)
    snap = job.snapshot()
    assert (snap["FilesDone"], snap["FilesTotal"], snap["Progress"]) == (1500, 2000, 0.75)
    assert len(changes) == 1502
    assert not control.cancelled
    control.cancel()
    assert control.cancelled


def test_the_bar_fills_with_the_fraction_and_fits_the_terminal() -> None:
    line = progress_line("isolate web01", 0.5, 25_110, 50_220, "running", 80)
    assert line.startswith("isolate web01  [") and line.endswith("]  50%  25,110/50,220 files")
    bar = line[line.index("[") + 1:line.index("]")]
    assert len(line) == 79 and bar.count("#") == bar.count(".")  # the last column left free
    assert "####" not in progress_line("isolate web01", 0.0, 0, 50_220, "running", 80)
    assert "." not in progress_line("isolate web01", 1.0, 50_220, 50_220, "running", 80).split("[")[1].split("]")[0]
    assert progress_line("release web01", 0.0, 0, 0, "running", 80) == "release web01  working"  # total unknown
    assert progress_line("verify", 0.0, 0, 0, "running", 80, elapsed=3.6) == "verify  working  4 s"  # counts nothing
    assert "cancelling" in progress_line("isolate web01", 0.3, 3, 10, "cancelling", 120)
    narrow = progress_line("isolate a-guest-with-a-very-long-name-indeed", 0.5, 1, 2, "running", 30)
    assert len(narrow) <= 29 and narrow.endswith("1/2 files") and "…" in narrow


def test_count_entries_counts_what_the_walk_scans_and_stays_on_the_filesystem(tmp_path: Path) -> None:
    for d in ("a/b/c", "a/d", "e"):
        (tmp_path / d).mkdir(parents=True)
    for f in ("a/1", "a/b/2", "a/b/c/3", "e/4", "5"):
        (tmp_path / f).write_bytes(b"")
    (tmp_path / "link").symlink_to("/etc")  # counted as an entry, never entered
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        # a b c d e (dirs), 1 2 3 4 5 (files), link
        assert count_entries(fd) == 11
        assert os.lseek(fd, 0, os.SEEK_CUR) == 0  # the walk's own fd was not read from
    finally:
        os.close(fd)
