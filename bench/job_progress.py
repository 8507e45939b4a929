"""What a job's progress costs a tree relabel: relabel.label_tree on a 50,000-file tree as svirtd's own
converge runs it (no job) against the same inside a job (the helper counts the tree while its workers
label, reports per directory at most 10 times a second per process, svirtd reads the lines as they come),
side by side. Each run labels the tree to a new label (every entry really changes), the two alternate
(and which goes first), five runs each, median reported.

The LAST line printed is one JSON object.
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from svirtd import labels, relabel
from svirtd.jobs import JobControl, current_job
from svirtd.models import Resource, ResourceClass, ResourceKind

FILES = 50_000
ROUNDS = 5
LABEL = "system_u:object_r:svirt_image_t:s0:c{},c{}"


def build_tree(root: Path) -> None:
    for d in range(50):
        for e in range(10):
            sub = root / f"d{d}" / f"e{e}"
            sub.mkdir(parents=True)
            for f in range(FILES // 500):
                (sub / f"f{f}").touch()


def label(root: Path, target: str, journals: Path, job: JobControl | None) -> float:
    # What relabel.label_tree needs of a probed tree: its open root and target.
    tree = Resource(path=str(root), device="filesystem /share", kind=ResourceKind.TREE, rclass=ResourceClass.PRIVATE)
    item = relabel.Probed(planned=relabel.PlannedResource(tree, target),
                          opened=labels.open_resource(str(root), ResourceKind.TREE))
    shutil.rmtree(journals, ignore_errors=True)
    token = current_job.set(job)
    try:
        t0 = time.perf_counter()
        relabel.label_tree(item, journals / "bench")
        elapsed = time.perf_counter() - t0
    finally:
        current_job.reset(token)
        item.close()
    return elapsed


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-jobs-", dir="/var/tmp") as tmp:
        root, journals = Path(tmp) / "tree", Path(tmp) / "journals"
        build_tree(root)
        plain: list[float] = []
        watched: list[float] = []
        counted: list[tuple[int, int]] = []
        for i in range(ROUNDS):
            job = JobControl(cancellable=True)
            order = [(plain, None), (watched, job)] if i % 2 == 0 else [(watched, job), (plain, None)]
            for n, (samples, control) in enumerate(order):
                samples.append(label(root, LABEL.format(2 * i + n, 900), journals, control))
            counted.append(job.counts())
        base, with_job = statistics.median(plain), statistics.median(watched)
        print(f"{'':28}{'median s':>10}{'runs':>40}")
        print(f"{'label_tree, no job':28}{base:>10.3f}{' '.join(f'{s:.2f}' for s in plain):>40}")
        print(f"{'label_tree in a job':28}{with_job:>10.3f}{' '.join(f'{s:.2f}' for s in watched):>40}")
        print(f"ratio job/no job: {with_job / base:.3f}; entries counted/walked per job run: {counted}")
        print(json.dumps({"bench": "job_progress", "files": FILES, "rounds": ROUNDS, "no_job_s": round(base, 4),
                          "job_s": round(with_job, 4), "ratio_job_vs_no_job": round(with_job / base, 3),
                          "walked_counted": counted[-1]}))


if __name__ == "__main__":
    main()
