"""What a guest's report derives from svirtd's table and its definition, kept while neither changes.

Query (and PrepareStart, which answers with a report) reads every resource's label on disk at each
call: that is the call's work. What those labels are compared with -- the guest's row, its claims,
the label decisions, its process and image labels -- depends only on the table and the definition,
so it is derived once and kept until the table changes (Store.generation: any committed change of a
row or a claim), the definition is replaced (a new DomainSpec object), or what the decisions depend
on is (libvirt's driver, the config after a reload, the label spec).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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


class ReportCache:
    """Used on the event loop only. Everything is dropped at each new store generation."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._generation = -1
        self._rows: dict[str, Assignment | None] = {}
        self._bases: dict[str, ReportBasis] = {}

    def _current(self) -> None:
        # The generation is read BEFORE any row: a change committed meanwhile bumps it after its
        # commit, so whatever is kept under the old value is dropped at the next call.
        generation = self._store.generation
        if generation != self._generation:
            self._rows.clear()
            self._bases.clear()
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
