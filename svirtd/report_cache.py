"""What a guest's report derives from svirtd's table and its definition, kept while neither changes.

Query (and PrepareStart, which answers with a report) reads every resource's label on disk at each
call: that is the call's work. What those labels are compared with -- the guest's row, its claims,
the label decisions, its process and image labels -- depends only on the table and the definition,
so it is derived once and kept until the table changes (Store.generation: any committed change of a
row or a claim), the definition is replaced (a new DomainSpec object), or what the decisions depend
on is (libvirt's driver, the config after a reload, the label spec).

The labels read on disk are kept too, with the report they made, while nothing they came from can have
changed (see `Observed`): the kernel says when a watched file or a directory on its way changed
(file_watch.py), and every other input is compared by identity or counter. A repeated Query then reads
no file and hops to no thread. The same argument lets the hook's PrepareStart skip a converge that
would find everything as the last one left it (`Started`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .file_watch import FileWatch
from .label_plan import LabelDecision
from .models import Assignment
from .store import Claim, Store


@dataclass(frozen=True)
class ReportBasis:
    depends_on: tuple[object, ...]  # compared by identity: (assignment, definition, config, spec, driver)
    claims: tuple[Claim, ...]
    decisions: tuple[LabelDecision, ...]
    process_label: str
    image_label: str


@dataclass(frozen=True)
class Observed:
    """A report and what it was made from. Still true while: the basis is the same object (same table
    generation, row, definition, config, spec, driver), no mount came or went and no storage was marked
    hung (`epoch`), the last proof is the same object (the isolation line), and nothing watched changed
    since `token` (the labels on disk). Kept only for files proven local (local_proof.py)."""
    basis: ReportBasis
    epoch: tuple[int, int]
    verify: object
    token: int
    report: object  # manager.GuestReport (not imported: manager imports this module)


@dataclass(frozen=True)
class Started:
    """The hook's last PrepareStart of a guest, converged without error: the same definition object,
    table generation (after it), config, spec, driver and epoch, and no watched file changed since the
    watch was set up BEFORE that converge. A converge that wrote a label raised an event on its own
    watch: so only one that found everything in place is kept, and converging again after it would
    read the same files and table and write nothing."""
    depends_on: tuple[object, ...]
    generation: int
    epoch: tuple[int, int]
    token: int
    assignment: Assignment


class ReportCache:
    """Used on the event loop only. Everything is dropped at each new store generation."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._generation = -1
        self._rows: dict[str, Assignment | None] = {}
        self._bases: dict[str, ReportBasis] = {}
        self._observed: dict[str, Observed] = {}
        self._started: dict[str, Started] = {}  # not dropped by a new generation: it says which it holds for
        self.watch = FileWatch()

    def _current(self) -> None:
        # The generation is read BEFORE any row: a change committed meanwhile bumps it after its
        # commit, so whatever is kept under the old value is dropped at the next call.
        generation = self._store.generation
        if generation != self._generation:
            self._rows.clear()
            self._bases.clear()
            self._observed.clear()
            self._generation = generation

    def assignment(self, uuid: str) -> Assignment | None:
        """Store.get, the same object while the table does not change."""
        self._current()
        if uuid not in self._rows:
            self._rows[uuid] = self._store.get(uuid)
        return self._rows[uuid]

    def basis(self, uuid: str, depends_on: tuple[object, ...], derive: Callable[[], ReportBasis]) -> ReportBasis:
        self._current()
        kept = self._bases.get(uuid)
        if kept is not None and len(kept.depends_on) == len(depends_on) and all(
                a is b for a, b in zip(kept.depends_on, depends_on, strict=True)):
            return kept
        basis = derive()
        self._bases[uuid] = basis
        return basis

    def observed(self, uuid: str, basis: ReportBasis, epoch: tuple[int, int], verify: object) -> object | None:
        """The kept report, if it is still true (see Observed); None otherwise."""
        self._current()
        kept = self._observed.get(uuid)
        if kept is None or kept.basis is not basis or kept.epoch != epoch or kept.verify is not verify:
            return None
        if not self.watch.unchanged(uuid, kept.token):
            del self._observed[uuid]
            return None
        return kept.report

    def keep_observed(self, uuid: str, entry: Observed) -> None:
        self._current()
        if self._bases.get(uuid) is entry.basis:  # else the table moved on while the files were read
            self._observed[uuid] = entry

    def started(self, uuid: str, depends_on: tuple[object, ...], epoch: tuple[int, int]) -> Assignment | None:
        """The assignment of the last PrepareStart, if converging again would change nothing."""
        kept = self._started.get(uuid)
        if kept is None or kept.generation != self._store.generation or kept.epoch != epoch or \
                len(kept.depends_on) != len(depends_on) or \
                not all(a is b for a, b in zip(kept.depends_on, depends_on, strict=True)):
            return None
        if not self.watch.unchanged(start_key(uuid), kept.token):
            del self._started[uuid]
            return None
        return kept.assignment

    def keep_started(self, uuid: str, entry: Started) -> None:
        if len(self._started) >= STARTED_KEPT:
            self._started.clear()
        self._started[uuid] = entry


STARTED_KEPT = 4096


def start_key(uuid: str) -> str:
    """The watch key of a guest's start files (its Query files are watched under its UUID)."""
    return f"start:{uuid}"

