"""What a guest's report derives from svirtd's table and its definition, kept while neither changes.

Query (and PrepareStart, which answers with a report) reads every resource's label on disk at each
call: that is the call's work. What those labels are compared with -- the guest's row, its claims,
the label decisions, its process and image labels -- depends only on the table and the definition,
so it is derived once and kept until the guest's row or claims change (Store.stamp: another guest's
change leaves it standing), the definition is replaced (a new DomainSpec object), or what the
decisions depend on is (libvirt's driver, the config after a reload, the label spec).

The labels read on disk are kept too, with the report they made, while nothing they came from can have
changed (see `Observed`): the kernel says when a watched file or a directory on its way changed
(file_watch.py), and every other input is compared by identity or counter. A repeated Query then reads
no file and hops to no thread. The same argument lets the hook's PrepareStart skip a converge that
would find everything as the last one left it (`Started`).
"""

from __future__ import annotations

from collections import OrderedDict
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
    """Used on the event loop only. A guest's entries are dropped when its row or claims change
    (Store.stamp): a burst of other guests' isolations leaves them standing. At most KEPT guests are
    kept, those asked about most recently (a client asking for every guest in turn must not grow svirtd)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        # uuid -> (stamp read before the row, row), least recently asked first
        self._rows: OrderedDict[str, tuple[int, Assignment | None]] = OrderedDict()
        self._bases: dict[str, ReportBasis] = {}
        self._observed: dict[str, Observed] = {}
        self._started: dict[str, Started] = {}  # on the whole table's generation: see started()
        self.watch = FileWatch()

    def assignment(self, uuid: str) -> Assignment | None:
        """Store.get, the same object while the guest's row and claims do not change."""
        # The stamp is read BEFORE the row: a change committed meanwhile moves it after its commit, so
        # a row kept under the old stamp is read again at the next call.
        stamp = self._store.stamp(uuid)
        kept = self._rows.get(uuid)
        if kept is not None:
            self._rows.move_to_end(uuid)
            if kept[0] == stamp:
                return kept[1]
        row = self._store.get(uuid)
        if kept is None and len(self._rows) >= KEPT:  # the guest asked about least recently goes
            gone, _ = self._rows.popitem(last=False)
            self._bases.pop(gone, None)
            self._observed.pop(gone, None)
        self._rows[uuid] = (stamp, row)
        return row

    def basis(self, uuid: str, depends_on: tuple[object, ...], derive: Callable[[], ReportBasis]) -> ReportBasis:
        """Kept while what it depends on are the same objects; the row (an object kept per stamp) is one."""
        kept = self._bases.get(uuid)
        if kept is not None and len(kept.depends_on) == len(depends_on) and all(
                a is b for a, b in zip(kept.depends_on, depends_on, strict=True)):
            return kept
        basis = derive()
        if uuid in self._rows:  # bounded with the rows it derives from
            self._bases[uuid] = basis
        return basis

    def observed(self, uuid: str, basis: ReportBasis, epoch: tuple[int, int], verify: object) -> object | None:
        """The kept report, if it is still true (see Observed); None otherwise."""
        kept = self._observed.get(uuid)
        if kept is None or kept.basis is not basis or kept.epoch != epoch or kept.verify is not verify:
            return None
        if not self.watch.unchanged(uuid, kept.token):
            del self._observed[uuid]
            return None
        return kept.report

    def keep_observed(self, uuid: str, entry: Observed) -> None:
        if self._bases.get(uuid) is entry.basis:  # else the table moved on while the files were read
            self._observed[uuid] = entry

    def started(self, uuid: str, depends_on: tuple[object, ...], epoch: tuple[int, int]) -> Assignment | None:
        """The assignment of the last PrepareStart, if converging again would change nothing. On the
        whole table's generation, not the guest's stamp: a start checks the guest against the others."""
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


KEPT = 1024  # guests whose rows, bases and reports are kept (~12 KB each with their replies)
STARTED_KEPT = 4096


def start_key(uuid: str) -> str:
    """The watch key of a guest's start files (its Query files are watched under its UUID)."""
    return f"start:{uuid}"

