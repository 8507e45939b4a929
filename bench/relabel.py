"""Relabeling a 100,000-file directory tree: svirtd's engine against `chcon -R`, side by side.

Both label the same tree to a new label each run (so every entry really changes), alternating (and
which goes first), five runs each, median reported. svirtd's run is the daemon's own code path (relabel.label_tree: the
treewalk helper, which also reads and journals every original, fdatasync'ed before each change;
chcon remembers nothing). The second pass is what a re-converge costs the daemon once the tree is
labeled (relabel.apply_probed with the manager's skip rule), against a first pass labeling it, five
alternating samples of each; a full re-walk with nothing to change is reported too, for when the fast
path cannot be used (after a crash).

Wall time on a shared 2-core machine mostly measures the scheduler, so the CPU time (user + system) each
side's processes used is reported too: `cpu_ratio_vs_chcon` = chcon's CPU / svirtd's (all its workers),
what each pays per entry whatever else runs.

The LAST line printed is one JSON object.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from svirtd import relabel
from svirtd.models import Resource, ResourceClass, ResourceKind

FILES = 100_000
ROUNDS = 5
LABEL = "system_u:object_r:svirt_image_t:s0:c{},c{}"


def build_tree(root: Path) -> int:
    count = 0
    for d in range(100):
        for e in range(10):
            sub = root / f"d{d}" / f"e{e}"
            sub.mkdir(parents=True)
            for f in range(FILES // 1000):
                (sub / f"f{f}").touch()
                count += 1
    return count


def probed_tree(root: Path, target: str) -> relabel.Probed:
    res = Resource(path=str(root), device="filesystem /share", kind=ResourceKind.TREE, rclass=ResourceClass.PRIVATE)
    plan = relabel.RelabelPlan(uuid="bench", level=None,  # type: ignore[arg-type]
                               items=(relabel.PlannedResource(res, target),), unhandled=())
    result = relabel.probe(plan)
    return result.present[0]


def children_cpu() -> float:
    """User + system seconds of every child process waited for so far (a helper's workers included)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def svirtd_label(root: Path, target: str, journal_dir: Path, cpu: list[float] | None = None) -> float:
    item = probed_tree(root, target)
    shutil.rmtree(journal_dir, ignore_errors=True)
    cpu0, t0 = children_cpu(), time.perf_counter()
    relabel.label_tree(item, journal_dir / "bench")
    elapsed = time.perf_counter() - t0
    if cpu is not None:
        cpu.append(children_cpu() - cpu0)
    item.close()
    return elapsed


def chcon_label(root: Path, target: str, cpu: list[float]) -> float:
    cpu0, t0 = children_cpu(), time.perf_counter()
    subprocess.run(["chcon", "-R", target, str(root)], check=True)
    elapsed = time.perf_counter() - t0
    cpu.append(children_cpu() - cpu0)
    return elapsed


def second_pass(root: Path, target: str, journals: Path) -> float:
    """What a re-converge costs the daemon once the tree carries target: the probe (open the root, read
    its label) and apply_probed with the manager's skip rule."""
    t0 = time.perf_counter()
    item = probed_tree(root, target)
    relabel.apply_probed([item], lambda _p: journals / "bench",
                         done_already=lambda p: p.current == p.planned.target)  # + claim applied, as the manager
    elapsed = time.perf_counter() - t0
    item.close()
    return elapsed


def full_rewalk(root: Path, target: str, journals: Path) -> float:
    """A walk of the whole tree with nothing to change (after a crash the fast path cannot be used)."""
    shutil.rmtree(journals / "rewalk", ignore_errors=True)
    t0 = time.perf_counter()
    result = relabel.run_treewalk("label", str(root), target, journals / "rewalk")
    elapsed = time.perf_counter() - t0
    assert result["changed"] == 0, result
    return elapsed


def main() -> None:
    base = Path(tempfile.mkdtemp(prefix="svirtd-bench-relabel-", dir="/var/tmp"))
    try:
        root, journals = base / "tree", base / "journals"
        files = build_tree(root)
        subprocess.run(["sync"], check=True)
        svirtd_runs: list[float] = []
        chcon_runs: list[float] = []
        svirtd_cpu: list[float] = []
        chcon_cpu: list[float] = []
        n = 1
        for round_ in range(ROUNDS):
            # Which goes first alternates: the page cache and writeback favour neither.
            pair = [lambda n=n: svirtd_runs.append(svirtd_label(root, LABEL.format(n, n + 1), journals, svirtd_cpu)),
                    lambda n=n: chcon_runs.append(chcon_label(root, LABEL.format(n + 2, n + 3), chcon_cpu))]
            for run in pair if round_ % 2 == 0 else reversed(pair):
                run()
            n += 4
        # Then, ROUNDS times: svirtd labels it to a new label (a first pass), re-converges (the daemon's
        # second pass), and re-walks it with nothing to change; medians of each, side by side.
        first_runs: list[float] = []
        second_runs: list[float] = []
        rewalk_runs: list[float] = []
        for _ in range(ROUNDS):
            target = LABEL.format(n, n + 1)
            n += 2
            first_runs.append(svirtd_label(root, target, journals))
            second_runs.append(second_pass(root, target, journals))
            rewalk_runs.append(full_rewalk(root, target, journals))
        check = relabel.run_treewalk("check", str(root), target)
        assert check["off_target"] == 0, check
        first, second, rewalk_s = (statistics.median(first_runs), statistics.median(second_runs),
                                   statistics.median(rewalk_runs))
        svirtd_s, chcon_s = statistics.median(svirtd_runs), statistics.median(chcon_runs)
        svirtd_cpu_s, chcon_cpu_s = statistics.median(svirtd_cpu), statistics.median(chcon_cpu)
        print(f"{files} files, {os.cpu_count()} cores: svirtd {svirtd_runs} s, chcon -R {chcon_runs} s")
        print(f"CPU (user + system): svirtd {svirtd_cpu} s, chcon -R {chcon_cpu} s")
        second_ms = [round(x * 1000, 3) for x in second_runs]
        print(f"first pass {first_runs} s; second pass (daemon's skip rule) {second_ms} ms; "
              f"full re-walk with nothing to change {rewalk_runs} s (medians below)")
        print(json.dumps({
            "files": files,
            "svirtd_s": round(svirtd_s, 4),
            "chcon_s": round(chcon_s, 4),
            "ratio_vs_chcon": round(chcon_s / svirtd_s, 3),
            "svirtd_cpu_s": round(svirtd_cpu_s, 4),
            "chcon_cpu_s": round(chcon_cpu_s, 4),
            "cpu_ratio_vs_chcon": round(chcon_cpu_s / svirtd_cpu_s, 3),
            "first_pass_s": round(first, 4),
            "second_pass_s": round(second, 6),
            "second_pass_speedup": round(first / second, 1),
            "full_rewalk_s": round(rewalk_s, 4),
            "full_rewalk_speedup": round(first / rewalk_s, 2),
            "cores": os.cpu_count(),
        }))
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
