"""The soak driver: rounds of random workload, svirtd SIGKILLed at a random moment of each, libvirtd
every few rounds; after each restart the invariants are checked from the outside until they hold or a
settling time passes (what still fails then is a finding). The last line printed is one JSON object.

Knobs (environment): SOAK_SVIRTD_KILLS (1000), SOAK_LIBVIRTD_KILLS (50), SOAK_SECONDS (0: no limit; else
stop after this long even if the kills are not reached), SOAK_SEED, SOAK_TREE_FILES (20000),
SOAK_TREES (2), SOAK_GUESTS (16 defined at once), SOAK_RUNNING (2 qemu at once), SOAK_SETTLE (20 s).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import libvirt

from testbed.bus import PrivateBus
from testbed.client import CallFailed, SvirtClient
from testbed.daemon import SvirtdProcess
from testbed.guests import IMAGE_ROOT
from testbed.libvirtd import Libvirtd, remove_domains

from .collect import collect, reasons_from
from .invariants import Facts, Report, check
from .workload import Knobs, Workload, World, remove_world


@dataclass
class Settings:
    svirtd_kills: int = 1000
    libvirtd_kills: int = 50
    seconds: float = 0.0
    seed: int = 19
    settle: float = 20.0
    knobs: Knobs = field(default_factory=lambda: Knobs(tree_files=20000))

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        e = os.environ if env is None else env
        return cls(svirtd_kills=int(e.get("SOAK_SVIRTD_KILLS", "1000")),
                   libvirtd_kills=int(e.get("SOAK_LIBVIRTD_KILLS", "50")),
                   seconds=float(e.get("SOAK_SECONDS", "0")), seed=int(e.get("SOAK_SEED", "19")),
                   settle=float(e.get("SOAK_SETTLE", "20")),
                   knobs=Knobs(max_guests=int(e.get("SOAK_GUESTS", "16")), max_running=int(e.get("SOAK_RUNNING", "2")),
                               trees=int(e.get("SOAK_TREES", "2")), tree_files=int(e.get("SOAK_TREE_FILES", "20000"))))


class Soak:
    def __init__(self, settings: Settings, work: Path, prefix: str) -> None:
        self.s = settings
        self.rng = random.Random(settings.seed)
        self.prefix = prefix
        self.libvirtd = Libvirtd(work / "libvirtd")
        self.bus = PrivateBus(work / "bus")
        self.world = World(root=IMAGE_ROOT / prefix, prefix=prefix)
        self.daemon: SvirtdProcess | None = None
        self.work = work
        self.kills = Counter[str]()
        self.findings: dict[str, list[str]] = {}
        self.worst = Report()
        self.rounds = 0
        self.ops = Counter[str]()
        self.settle_times: list[float] = []

    # -- the parts -------------------------------------------------------------------------------

    def start(self) -> None:
        self.libvirtd.start()
        self.bus.start()
        self.world.root.mkdir(parents=True, exist_ok=True)
        self.world.make_trees(self.s.knobs.trees, self.s.knobs.tree_files, self.rng)
        self._start_svirtd()

    def _start_svirtd(self) -> None:
        """A new process object each time: its notifications are this start's only."""
        self.daemon = SvirtdProcess(self.work / "svirtd", self.bus.address, self.libvirtd.uri, self.libvirtd.hook_env,
                                    auto_confine_names=[f"{self.prefix}-*"], auto_verify_max_guests=0,
                                    rescan_seconds=5, log_level="info")
        self.daemon.start(timeout=60)

    def close(self) -> None:
        if self.daemon is not None:
            self.daemon.stop()
        # Undefine with svirtd stopped: the files are then checked by nobody; the soak's own dir goes.
        remove_domains(self.libvirtd.uri, lambda name: name.startswith(self.prefix))
        self.bus.stop()
        self.libvirtd.stop()
        remove_world(self.world)

    # -- one round -------------------------------------------------------------------------------

    def round(self) -> None:
        assert self.daemon is not None
        self.rounds += 1
        workload = Workload(self.world, self.libvirtd.uri, self.bus.address, self.s.knobs, self.rng).start()
        time.sleep(self.rng.uniform(0.05, 0.6))
        self.daemon.kill()
        self.kills["svirtd"] += 1
        time.sleep(self.rng.uniform(0, 0.2))  # the workload goes on while svirtd is dead
        kill_libvirtd = self._libvirtd_due()
        workload.stop()
        self.ops.update(workload.ops)
        if kill_libvirtd:
            self.libvirtd.kill_libvirtd()
            self.kills["libvirtd"] += 1
            self.libvirtd.start_libvirtd()
        self._start_svirtd()
        self._wait_reconciled()
        self._check()

    def _libvirtd_due(self) -> bool:
        """Spread the libvirtd kills evenly over the svirtd kills."""
        if self.kills["libvirtd"] >= self.s.libvirtd_kills:
            return False
        every = max(1, self.s.svirtd_kills // max(1, self.s.libvirtd_kills))
        return self.kills["svirtd"] % every == 0

    def _wait_reconciled(self) -> None:
        assert self.daemon is not None
        deadline = time.monotonic() + 60
        while not any("libvirt connected" in n for n in self.daemon.drain_notifications(0.05)):
            if time.monotonic() > deadline:
                raise RuntimeError(f"svirtd did not reconcile within 60 s:\n{self.daemon.log_tail()}")

    def _check(self) -> None:
        """Until the invariants hold (svirtd's relabels finish after its answers), at most `settle` s."""
        t0 = time.monotonic()
        while True:
            report = check(self.facts())
            if report.clean or time.monotonic() - t0 > self.s.settle:
                break
            time.sleep(0.2)
        self.settle_times.append(time.monotonic() - t0)
        for name, items in vars(report).items():
            if items:
                getattr(self.worst, name).extend(items)
                self.findings.setdefault(f"round {self.rounds}", []).extend(f"{name}: {i}" for i in items[:5])

    def facts(self) -> Facts:
        assert self.daemon is not None
        self._sync_world()
        reasons = asyncio.run(self._reasons())
        return collect(self.daemon.state_dir / "state.db", self.daemon.state_dir / "trees", self.libvirtd.uri,
                       self.prefix, self.world.originals, self.world.trees, reasons)

    def _sync_world(self) -> None:
        """The guests the soak believes it has are those libvirt has (a define or an undefine may have been
        cut short by a kill)."""
        conn = libvirt.open(self.libvirtd.uri)
        try:
            present = {d.UUIDString() for d in conn.listAllDomains() if d.name().startswith(self.prefix)}
        finally:
            conn.close()
        self.world.guests = {u: g for u, g in self.world.guests.items() if u in present}

    async def _reasons(self) -> dict[str, str]:
        """svirtd's word on each guest it does not isolate: Query's error, or the log's refusal."""
        assert self.daemon is not None
        reasons: dict[str, str] = {}
        async with SvirtClient(self.bus.address) as client:
            isolated = {r[0] for r in await client.call("List")}
            missing = {u: n for u, (n, _t) in self.world.guests.items() if u not in isolated}
            for uuid in missing:
                try:
                    await client.call("Query", "s", uuid)
                except CallFailed as exc:
                    if "released by an admin" in exc.text:
                        reasons[uuid] = exc.text
        logged = reasons_from(self.daemon.log_text().splitlines(), missing.values())
        reasons.update({u: logged[n] for u, n in missing.items() if n in logged and u not in reasons})
        return reasons

    # -- the whole run ---------------------------------------------------------------------------

    def run(self) -> dict[str, object]:
        t0 = time.monotonic()
        self.start()
        try:
            while self.kills["svirtd"] < self.s.svirtd_kills or self.kills["libvirtd"] < self.s.libvirtd_kills:
                if self.s.seconds and time.monotonic() - t0 > self.s.seconds:
                    break
                self.round()
                if self.rounds % 25 == 0:  # a long run says how far it is (stderr: the last stdout line is JSON)
                    print(f"soak: {self.rounds} rounds, {self.kills['svirtd']} svirtd and {self.kills['libvirtd']} "
                          f"libvirtd kills, {time.monotonic() - t0:.0f} s, findings in {len(self.findings)} rounds",
                          file=sys.stderr, flush=True)
        except Exception:
            if self.daemon is not None:
                print(f"svirtd's log, last lines:\n{self.daemon.log_tail(60)}", file=sys.stderr)
            raise
        finally:
            self.close()
        elapsed = time.monotonic() - t0
        counts = self.worst.counts()
        return {"svirtd_kills": self.kills["svirtd"], "libvirtd_kills": self.kills["libvirtd"],
                "duplicate_pairs": counts["duplicate_pairs"], "lost_originals": counts["lost_originals"],
                "unconfined_without_reason": counts["unconfined_without_reason"], "orphans": counts["orphans"],
                "mislabeled": counts["mislabeled"], "rounds": self.rounds, "seconds": round(elapsed, 1),
                "svirtd_kills_per_minute": round(self.kills["svirtd"] / elapsed * 60, 1),
                "settle_max_s": round(max(self.settle_times, default=0.0), 2), "seed": self.s.seed,
                "tree_files": self.s.knobs.tree_files,
                "ops_ok": sum(n for k, n in self.ops.items() if k.endswith(":ok")),
                "ops": dict(sorted(self.ops.items()))}


def main() -> int:
    settings = Settings.from_env()
    work = Path(tempfile.mkdtemp(prefix="svirtd-soak-"))
    prefix = f"soak{os.getpid()}"
    soak = Soak(settings, work, prefix)
    try:
        result = soak.run()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for where, items in soak.findings.items():  # the first few of each round, to start debugging from
        print(f"{where}: " + "\n  ".join(items), file=sys.stderr)
    print(json.dumps(result))
    bad = any(result[k] for k in ("duplicate_pairs", "lost_originals", "unconfined_without_reason", "orphans",
                                  "mislabeled"))
    return 1 if bad else 0
