"""The allocation table on etcd, seen from the LevelBook (issue 16: a pair means one guest on every host).

With [cluster] backend = "etcd" the manager asks this book for a guest's level instead of the LevelBook
alone. etcd arbitrates: a new binding is one transaction that creates the pair's key and the UUID's key
only if neither exists (cluster_model.KeyLayout.reserve), so two hosts never hold one pair for two UUIDs,
and a UUID bound anywhere gets that same pair here (migration, a copied definition, a restored backup).

Each host keeps, in its own store, the bindings it uses (cluster_bindings) and what it still owes etcd:
a row is written before etcd may hear of a change and settled after etcd confirmed it, so a crash, a
partition or a restart in any order leaves a row that the next sync finishes. While etcd cannot be
reached (down, partitioned, no quorum) guests whose pair is known here keep their pair and start; a new
binding is refused (ClusterUnavailable); releases wait in the store and reach etcd on reconnect.

The free pairs: a watch on the pairs' keys keeps the ClusterAllocator's view of what is bound anywhere,
so a pick is O(1) from the pairs believed free and a lost race only costs another pick.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import Protocol

from .cluster_model import (
    Binding,
    ClusterAllocator,
    ClusterState,
    ClusterStatus,
    KeyLayout,
    KeyValue,
    Txn,
    TxnResult,
    mirror_diff,
    prefix_end,
)
from .config import ClusterConfig
from .errors import ClusterUnavailable, InvalidArgument, LabelSpaceExhausted, ResourceConflict
from .etcd_client import EtcdCompacted, EtcdError, EtcdUnavailable, WatchEvent
from .level_book import LevelBook, remap_note
from .level_claims import LevelClaim, LevelSource
from .logsetup import guest_fields
from .models import Level
from .store import ClusterRow, Store

log = logging.getLogger(__name__)

# Lost races for one guest before giving up; with a current view each costs one ~2 ms round trip.
MAX_RACES = 32
# A row etcd disagrees with is tried again this often (and at every connect), not every few seconds.
CONFLICT_RETRY_SECONDS = 60.0
BOUND, JOINING, LEAVING, MOVING = "bound", "joining", "leaving", "moving"


class EtcdApi(Protocol):
    async def range(self, key: str, range_end: str = "", keys_only: bool = False) -> tuple[list[KeyValue], int]: ...
    async def txn(self, txn: Txn) -> TxnResult: ...
    async def put(self, key: str, value: str, lease: int = 0) -> None: ...
    async def lease_grant(self, ttl: int) -> int: ...
    async def lease_keepalive(self, lease: int) -> int: ...
    async def lease_revoke(self, lease: int) -> None: ...
    async def prefer_leader(self) -> str: ...
    def watch(self, key: str, range_end: str, start_revision: int) -> AsyncIterator[list[WatchEvent]]: ...
    async def close(self) -> None: ...


class _Vanished(Exception):
    """The binding was deleted between a read and a compare-and-swap: bind afresh."""


class ClusterBook:
    def __init__(self, settings: ClusterConfig, host: str, store: Store, book: LevelBook,
                 allocator: ClusterAllocator, client: EtcdApi) -> None:
        self.settings = settings
        self.host = host
        self.store = store
        self.book = book
        self.allocator = allocator
        self.client = client
        self.layout = KeyLayout(settings.prefix)
        self.status = ClusterStatus(state=ClusterState.CONNECTING, host=host, since=time.time())
        # Called (as a task this book owns) each time etcd answers again after being unavailable.
        self.on_available: Callable[[], Awaitable[None]] | None = None
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._lease = 0
        self._wake = asyncio.Event()
        self._first = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._conflicts: dict[str, str] = {}  # uuid -> what this host and etcd disagree on
        self._conflicts_tried = 0.0
        self.races_lost = 0  # picks another host bound first (the view was behind): each cost one round trip
        book.cluster = self

    # -- what others read -----------------------------------------------------------------------

    @property
    def available(self) -> bool:
        return self.status.state is ClusterState.CONNECTED

    def describe(self) -> str:
        self.status.pending = len(self.store.cluster_bindings(pending=True))
        self.status.conflicts = list(self._conflicts.values())
        return self.status.describe()

    def holder(self, level: Level, uuid: str) -> str | None:
        """LevelBook's view: the guest another binding of the cluster gives this pair to."""
        bound = self.allocator.bound_to(level)
        return None if bound is None or bound == uuid else f"{bound} (bound in the cluster)"

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Record the guests isolated here before the etcd backend was configured (their pairs must be bound
        in etcd too), then connect in the background."""
        for uuid, name, level in self.store.unbound_assignments():
            self.store.put_cluster_binding(ClusterRow(uuid, level, name, JOINING))
        self._task = asyncio.create_task(self._run(), name="etcd-cluster")

    async def wait_first_attempt(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._first.wait()

    async def stop(self) -> None:
        for task in [*self._tasks, *([self._task] if self._task else [])]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._lease and self.available:  # the host is no longer alive: say so at once
            with contextlib.suppress(EtcdUnavailable, EtcdError, OSError):
                await self.client.lease_revoke(self._lease)
        await self.client.close()

    # -- use-cases (called by the manager under the guest's lock) --------------------------------

    async def choose(self, uuid: str, name: str, claims: Iterable[LevelClaim]) -> tuple[Level, str]:
        """The guest's pair: the one etcd binds its UUID to, else the first claim nobody holds anywhere,
        else a fresh pair; reserved in etcd before this returns. While etcd cannot answer: the pair this
        host knows for it, else ClusterUnavailable."""
        if not self._first.is_set():
            await self.wait_first_attempt(self.settings.timeout_seconds * (len(self.settings.endpoints) + 1))
        async with self._locks[uuid]:
            row = self.store.cluster_binding(uuid)
            if self.available:
                try:
                    return await self._bind(uuid, name, list(claims))
                except (EtcdUnavailable, EtcdError) as exc:  # an error etcd answers with is no grant either
                    self._unavailable(str(exc))
            return self._from_cache(uuid, name, row)

    async def release(self, uuid: str) -> None:
        """This host no longer uses the guest's binding (undefined here, or its first isolation failed).
        Recorded first; etcd hears of it now or at the next reconnect. The last host out frees the pair."""
        async with self._locks[uuid]:
            row = self.store.cluster_binding(uuid)
            if row is None:
                return
            self.store.put_cluster_binding(row._replace(state=LEAVING))
            if self.available:
                try:
                    await self._leave(row)
                except (EtcdUnavailable, EtcdError) as exc:  # the row stays: the next sync retries
                    self._unavailable(str(exc))

    def note_moved(self, uuid: str, name: str, old: Level, new: Level) -> None:
        """The guest runs with another pair than its binding (it started before its definition carried
        svirtd's label): re-bind it in etcd to the pair that runs."""
        self.store.put_cluster_binding(ClusterRow(uuid, str(new), name, MOVING, str(old)))
        self._wake.set()

    def forget_absent(self, present: set[str]) -> None:
        """After a reconcile with libvirt: bindings of guests neither defined nor isolated here are let go
        (a crash between a release and its record leaves such a row)."""
        for row in self.store.cluster_bindings():
            if row.uuid not in present and row.state != LEAVING and self.store.get(row.uuid) is None:
                log.info("guest %s is gone from this host: leaving its binding %s", row.name or row.uuid, row.level,
                         extra=guest_fields(row.uuid, row.name))
                self.store.put_cluster_binding(row._replace(state=LEAVING))
                self._wake.set()

    async def forget_host(self, host: str) -> int:
        """An admin's decision that a host is gone for good: take it out of every binding, and free the
        pairs only it used. Refused while the host's lease is alive. Returns the number of pairs freed."""
        if host == self.host:
            raise InvalidArgument(f"{host} is this host: run `svirtctl cluster forget-host` on another one")
        if not self.available:
            raise self._unavailable_error("forget a host")
        try:
            alive, _rev = await self.client.range(self.layout.host_key(host))
            if alive:
                raise InvalidArgument(f"host {host} is alive (its lease in etcd is being renewed): stop svirtd there, "
                                      f"or wait up to {self.settings.lease_seconds} s after it died, and try again")
            kvs, _rev = await self.client.range(self.layout.guests, prefix_end(self.layout.guests))
            freed = users = 0
            for kv in kvs:
                b = self.layout.binding_in(kv)
                if b is None or host not in b.hosts:
                    continue
                users += 1
                with contextlib.suppress(_Vanished):
                    freed += await self._without(b, host)
        except (EtcdUnavailable, EtcdError) as exc:
            self._unavailable(str(exc))
            raise self._unavailable_error("forget a host") from None
        log.warning("forgot host %s: taken out of %d bindings, %d pairs freed", host, users, freed)
        return freed

    # -- binding --------------------------------------------------------------------------------

    async def _bind(self, uuid: str, name: str, claims: list[LevelClaim]) -> tuple[Level, str]:
        # No row before the transaction (one fsync less per allocation): a binding of this host that a crash
        # or a lost reply left without a row is found by _adopt_orphans at the next connect.
        conflicts: list[str] = []
        for level, picked in self._candidates(uuid, claims, conflicts):
            b = Binding(uuid, level, name, (self.host,))
            result = await self._txn_or_undo(self.layout.reserve(b), uuid, level, picked)
            if result.succeeded:
                if not picked:
                    self._settle_claim(uuid, level)
                self.allocator.mirror_put(level, uuid)
                # Not fsync'ed: lost with a power cut, etcd's binding lists this host and _adopt_orphans restores it.
                self.store.put_cluster_binding(ClusterRow(uuid, str(level), name, BOUND), durable=False)
                self._conflicts.pop(uuid, None)
                return level, remap_note(conflicts, level)
            self._drop_candidate(uuid, level, picked)
            guest_kvs, level_kvs = result.ranges
            if guest_kvs:  # bound already (by another host, or by this one before a crash): that pair, always
                existing = self.layout.binding_in(guest_kvs[0])
                if existing is None:
                    raise EtcdError(f"unreadable binding at {guest_kvs[0].key}")
                try:
                    return await self._join(existing, name), ""
                except _Vanished:
                    continue  # its last user let it go this instant: bind afresh
            owner = self.layout.owner_in(level_kvs[0].value) if level_kvs else None
            self.allocator.mirror_put(level, owner or "?")
            self.races_lost += picked
            if not picked:
                conflicts.append(f"{level} is bound in the cluster to guest {owner}")
        raise LabelSpaceExhausted(f"no free pair for {name} after {MAX_RACES} attempts: the cluster's pairs are "
                                  "(nearly) all bound; release guests or widen 'categories' on every host")

    def _candidates(self, uuid: str, claims: list[LevelClaim], conflicts: list[str]) -> Iterator[tuple[Level, bool]]:
        """(level, picked): the guest's own claims nobody holds (as far as this host knows), then random
        picks from the pairs believed free. Each is reserved locally while etcd is asked."""
        for claim in claims:
            admin_or_running = claim.source in (LevelSource.STATIC, LevelSource.RUNNING)
            if not admin_or_running and not self.allocator.in_space(claim.level):
                conflicts.append(f"{claim.source.value} {claim.level} lies outside the categories svirtd may hand out")
                continue
            holder = self.book.holder_of(claim.level, uuid)
            if holder is not None:
                conflicts.append(f"{claim.source.value} {claim.level} is held by guest {holder}")
                continue
            if self.book.foreign_level(uuid) != claim.level:
                try:
                    self.allocator.reserve(claim.level)
                except ValueError:  # another guest of this host is being bound to it right now
                    continue
            yield claim.level, False
        for _ in range(MAX_RACES):
            yield self.allocator.allocate(), True  # LabelSpaceExhausted when nothing is believed free

    async def _txn_or_undo(self, txn: Txn, uuid: str, level: Level, picked: bool) -> TxnResult:
        try:
            return await self.client.txn(txn)
        except BaseException:
            self._drop_candidate(uuid, level, picked)
            raise

    def _drop_candidate(self, uuid: str, level: Level, picked: bool) -> None:
        """Undo the local reservation made for a candidate that lost (a guest's own foreign one stays)."""
        if picked or self.book.foreign_level(uuid) != level:
            with contextlib.suppress(ValueError):
                self.allocator.release(level)

    def _settle_claim(self, uuid: str, level: Level) -> None:
        """A claimed pair won: it is the guest's now (a foreign reservation of another pair is dropped)."""
        if self.book.foreign_level(uuid) == level:
            self.book.take(level, uuid)  # the foreign reservation changes hands
        else:
            self.book.release_foreign(uuid)

    async def _join(self, existing: Binding, name: str) -> Level:
        """The UUID is bound already: take its pair here (this host among its users)."""
        level = existing.level
        holder = self.book.holder_of(level, existing.uuid)
        if holder is not None:
            raise ResourceConflict(f"the cluster binds {name} ({existing.uuid}) to {level}, which guest {holder} holds "
                                   f"on this host: release one of the two (`svirtctl release`)")
        self.allocator.mirror_put(level, existing.uuid)
        await self._with(existing, self.host)
        for _ in range(100):  # a concurrent pick of this pair here loses its transaction in a moment
            try:
                self.book.take(level, existing.uuid)
                break
            except ValueError:
                await asyncio.sleep(0.01)
        # Not fsync'ed either (as a reserve's row): etcd lists this host now, and _adopt_orphans restores a lost row.
        self.store.put_cluster_binding(ClusterRow(existing.uuid, str(level), name or existing.name, BOUND),
                                       durable=False)
        self._conflicts.pop(existing.uuid, None)
        return level

    async def _with(self, b: Binding, host: str) -> None:
        """Add host to the binding's users (compare-and-swap; _Vanished if it was deleted meanwhile)."""
        while True:
            updated = b.with_host(host)
            if updated is None:
                return
            result = await self.client.txn(self.layout.update_hosts(updated, b))
            if result.succeeded:
                return
            b = self._reread(result, b)

    async def _without(self, b: Binding, host: str) -> int:
        """Take host out of the binding's users; delete it when nobody is left. 1 when the pair was freed."""
        while True:
            rest = b.without_host(host)
            if host not in b.hosts:
                return 0
            txn = self.layout.drop(b) if rest is None else self.layout.update_hosts(rest, b)
            result = await self.client.txn(txn)
            if result.succeeded:
                if rest is None:
                    self.allocator.mirror_delete(b.level)
                    return 1
                return 0
            b = self._reread(result, b)

    def _reread(self, result: TxnResult, was: Binding) -> Binding:
        kvs = result.ranges[0] if result.ranges else ()
        fresh = self.layout.binding_in(kvs[0]) if kvs else None
        if fresh is None or fresh.uuid != was.uuid:
            raise _Vanished()
        return fresh

    async def _leave(self, row: ClusterRow) -> None:
        kvs, _rev = await self.client.range(self.layout.guest_key(row.uuid))
        b = self.layout.binding_in(kvs[0]) if kvs else None
        if b is not None:
            with contextlib.suppress(_Vanished):
                await self._without(b, self.host)
        self.store.delete_cluster_binding(row.uuid)
        self._conflicts.pop(row.uuid, None)

    def _from_cache(self, uuid: str, name: str, row: ClusterRow | None) -> tuple[Level, str]:
        if row is None or not row.level:
            raise self._unavailable_error(f"bind a new pair for {name}")
        level = Level.parse(row.level)
        holder = self.book.holder_of(level, uuid)
        if holder is not None:
            raise ResourceConflict(f"{name}'s pair {level} is held here by guest {holder}")
        self.book.take(level, uuid)
        if row.state == LEAVING:
            self.store.put_cluster_binding(row._replace(state=JOINING))
        log.info("%s keeps its pair %s from this host's copy of the cluster table (etcd unavailable)", name, level,
                 extra=guest_fields(uuid, name))
        return level, ""

    # -- settling what etcd has not heard yet ----------------------------------------------------

    async def _sync_pending(self) -> None:
        retry = time.monotonic() - self._conflicts_tried >= CONFLICT_RETRY_SECONDS  # an admin may have mended them
        if retry:
            self._conflicts_tried = time.monotonic()
        for row in self.store.cluster_bindings(pending=True):
            if row.uuid in self._conflicts and not retry:
                continue
            async with self._locks[row.uuid]:
                fresh = self.store.cluster_binding(row.uuid)
                if fresh is None or fresh.state == BOUND:
                    continue
                try:
                    await self._settle(fresh)
                except EtcdError as exc:  # this row only (unreadable data...): the others go on
                    self._conflict(fresh, f"etcd refused to settle {fresh.name or fresh.uuid}: {exc}")

    async def _adopt_orphans(self) -> None:
        """Where this host's rows and etcd disagree on who uses what, at each connect (one read of every
        binding). A binding listing this host without a row here (a crash between a transaction and its row,
        a reply lost in a partition): kept if the guest is isolated or released-but-defined here, else let go.
        A row whose binding no longer lists this host (an admin forgot it while it was cut off): bound
        again, or reported as a conflict if its pair went to another guest meanwhile."""
        kvs, _rev = await self.client.range(self.layout.guests, prefix_end(self.layout.guests))
        listed: set[str] = set()
        for kv in kvs:
            b = self.layout.binding_in(kv)
            if b is None or self.host not in b.hosts:
                continue
            listed.add(b.uuid)
            if self.store.cluster_binding(b.uuid) is not None:
                continue
            async with self._locks[b.uuid]:  # an allocation in flight writes its row under this lock
                if self.store.cluster_binding(b.uuid) is not None:
                    continue
                a = self.store.get(b.uuid)
                kept = a is not None or self.store.is_opted_out(b.uuid)
                level = a.level if a is not None else b.level
                self.store.put_cluster_binding(ClusterRow(b.uuid, str(level), b.name, JOINING if kept else LEAVING))
                log.info("etcd lists this host for %s (%s) without a record here: %s", b.name, b.level,
                         "recorded" if kept else "let go", extra=guest_fields(b.uuid, b.name))
        for row in self.store.cluster_bindings():
            if row.state != BOUND or row.uuid in listed:
                continue
            async with self._locks[row.uuid]:
                fresh = self.store.cluster_binding(row.uuid)
                if fresh is not None and fresh.state == BOUND:
                    log.warning("etcd no longer lists this host for %s (%s; forgotten while unreachable?): "
                                "binding it again", row.name, row.level, extra=guest_fields(row.uuid, row.name))
                    self.store.put_cluster_binding(fresh._replace(state=JOINING))

    async def _settle(self, row: ClusterRow) -> None:
        if row.state == LEAVING:
            await self._leave(row)
        elif row.state == JOINING:
            await self._rejoin(row)
        elif row.state == MOVING:
            await self._move(row)

    async def _rejoin(self, row: ClusterRow) -> None:
        """This host uses row.level for the guest (bound while etcd was away, or before the etcd backend):
        make etcd say so, or report the conflict when etcd bound either to someone else meanwhile."""
        level = Level.parse(row.level)
        b = Binding(row.uuid, level, row.name, (self.host,))
        result = await self.client.txn(self.layout.reserve(b))
        if not result.succeeded:
            guest_kvs, level_kvs = result.ranges
            existing = self.layout.binding_in(guest_kvs[0]) if guest_kvs else None
            if existing is not None and existing.level == level:
                try:
                    await self._with(existing, self.host)
                except _Vanished:
                    return  # deleted this instant: the next sync binds it afresh
            elif existing is not None:
                self._conflict(row, f"guest {row.name or row.uuid} uses {level} here but the cluster binds it to "
                                    f"{existing.level}: restart it after `svirtctl release` + `svirtctl isolate` here")
                return
            else:
                owner = self.layout.owner_in(level_kvs[0].value) if level_kvs else None
                self._conflict(row, f"guest {row.name or row.uuid} uses {level} here, which the cluster binds to "
                                    f"guest {owner}: the two are not isolated; release one of them")
                return
        self.allocator.mirror_put(level, row.uuid)
        self.store.put_cluster_binding(row._replace(state=BOUND, moved_from=""))

    async def _move(self, row: ClusterRow) -> None:
        new = Level.parse(row.level)
        kvs, _rev = await self.client.range(self.layout.guest_key(row.uuid))
        b = self.layout.binding_in(kvs[0]) if kvs else None
        if b is None or b.level == new:
            await self._rejoin(row._replace(state=JOINING))
            return
        if str(b.level) != row.moved_from:
            self._conflict(row, f"guest {row.name} runs with {new} here, the cluster binds it to {b.level}")
            return
        result = await self.client.txn(self.layout.move(b, new))
        if not result.succeeded:
            self._conflict(row, f"guest {row.name} runs with {new} here, which the cluster binds to another guest")
            return
        self.allocator.mirror_delete(b.level)
        self.allocator.mirror_put(new, row.uuid)
        self.store.put_cluster_binding(row._replace(state=BOUND, moved_from=""))

    def _conflict(self, row: ClusterRow, text: str) -> None:
        if self._conflicts.get(row.uuid) != text:
            log.error("cluster conflict: %s", text, extra=guest_fields(row.uuid, row.name))
        self._conflicts[row.uuid] = text

    # -- the connection -------------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = 0.5
        while True:
            watch: asyncio.Task[None] | None = None
            try:
                revision = await self._connect()
                watch = asyncio.create_task(self._watch(revision + 1), name="etcd-watch")
                await self._sync_pending()
                backoff = 0.5
                await self._serve(watch)
            except EtcdCompacted:
                continue
            except (EtcdUnavailable, EtcdError, OSError) as exc:
                self._unavailable(str(exc))
                self._first.set()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                if watch is not None:
                    watch.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await watch

    async def _connect(self) -> int:
        """Liveness lease and key, then the whole pairs' table into the mirror; etcd's revision."""
        if not self._lease or await self.client.lease_keepalive(self._lease) <= 0:
            self._lease = await self.client.lease_grant(self.settings.lease_seconds)
            await self.client.put(self.layout.host_key(self.host),
                                  f'{{"host":"{self.host}","since":{time.time():.0f}}}', lease=self._lease)
        await self.client.prefer_leader()  # once etcd answers: an outage is reported as soon as before
        kvs, revision = await self.client.range(self.layout.levels, prefix_end(self.layout.levels))
        seen: dict[Level, str] = {}
        for kv in kvs:
            level = self.layout.level_of_key(kv.key)
            if level is not None:
                seen[level] = self.layout.owner_in(kv.value) or "?"
        gone, changed = mirror_diff(self.allocator.mirrored(), seen)
        for level in gone:
            self.allocator.mirror_delete(level)
        for level, uuid in changed.items():
            self.allocator.mirror_put(level, uuid)
        await self._refresh_hosts()
        await self._adopt_orphans()
        self._conflicts_tried = 0.0
        was = self.status.state
        self.status.state, self.status.reason, self.status.since = ClusterState.CONNECTED, "", time.time()
        if was is not ClusterState.CONNECTED:
            log.info("etcd connected as host %s: %d pairs bound in the cluster, %d free here", self.host, len(seen),
                     self.allocator.free)
        if was is ClusterState.UNAVAILABLE and self.on_available is not None:
            self._own(self.on_available())
        self._first.set()
        return revision

    async def _serve(self, watch: asyncio.Task[None]) -> None:
        """Renew the lease and settle pending rows until the watch breaks (then re-read) or etcd fails."""
        period = max(self.settings.lease_seconds / 3, 0.5)
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(period):
                    await self._wake.wait()
            self._wake.clear()
            if watch.done():
                return  # re-read everything and watch again
            if await self.client.lease_keepalive(self._lease) <= 0:
                return  # expired while this host could not reach etcd: a new lease
            await self.client.prefer_leader()  # an election may have moved it (one status request when not)
            if not self.available:
                return  # a request failed meanwhile: re-read what was missed
            await self._refresh_hosts()
            await self._sync_pending()

    async def _watch(self, revision: int) -> None:
        try:
            async for batch in self.client.watch(self.layout.levels, prefix_end(self.layout.levels), revision):
                for event in batch:
                    level = self.layout.level_of_key(event.kv.key)
                    if level is None:
                        continue
                    if event.kind == "DELETE":
                        self.allocator.mirror_delete(level)
                    else:
                        self.allocator.mirror_put(level, self.layout.owner_in(event.kv.value) or "?")
        except (EtcdUnavailable, EtcdError, OSError) as exc:
            log.debug("etcd watch ended: %s", exc)
        finally:
            self._wake.set()

    async def _refresh_hosts(self) -> None:
        kvs, _rev = await self.client.range(self.layout.hosts, prefix_end(self.layout.hosts), keys_only=True)
        self.status.hosts_alive = tuple(sorted(kv.key.removeprefix(self.layout.hosts) for kv in kvs))

    def _unavailable(self, reason: str) -> None:
        if self.status.state is not ClusterState.UNAVAILABLE:
            log.error("etcd unavailable: %s. New guests are refused until it answers; guests with a known pair "
                      "still start", reason)
            self.status.since = time.time()
        self.status.state, self.status.reason = ClusterState.UNAVAILABLE, reason
        self._wake.set()

    def _unavailable_error(self, what: str) -> ClusterUnavailable:
        since = time.strftime("%H:%M:%S", time.localtime(self.status.since))
        return ClusterUnavailable(
            f"cannot {what}: the cluster's allocation table (etcd) is unavailable since {since} "
            f"({self.status.reason or 'not connected yet'}). Check that a majority of the etcd members "
            f"({', '.join(self.settings.endpoints)}) run and that this host reaches them (`etcdctl endpoint health`); "
            "svirtd retries on its own")

    def _own(self, work: Awaitable[None]) -> None:
        async def run() -> None:
            try:
                await work
            except Exception:
                log.exception("after etcd came back")

        task = asyncio.create_task(run(), name="etcd-available")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
