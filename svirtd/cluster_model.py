"""The allocation table on etcd: key layout, bindings, transactions and the cluster-wide free view (pure).

A guest's pair is bound to its UUID once for the whole cluster. Two keys say it, written together in
one transaction that succeeds only if neither exists yet (create_revision == 0 on both), so no pair
can ever be bound to two UUIDs and no UUID to two pairs, whichever hosts race:

    {prefix}levels/s0:cA,cB  -> {"uuid": U}                                the pair's owner
    {prefix}guests/U         -> {"level": "s0:cA,cB", "name": N, "hosts": [H, ...]}
    {prefix}hosts/H          -> {"host": H, "since": T}     (on H's lease: liveness, for reporting only)

`hosts` lists every host that uses the binding (the guest is defined or isolated there). A host that
stops using it takes itself out (compare-and-swap on the guest key's mod_revision); the last one out
deletes both keys. A dead host is never taken out automatically -- its images still carry the pair --
only by an admin (`svirtctl cluster forget-host`). Nothing here does I/O: etcd_client sends these
operations, cluster_book decides when.
"""

from __future__ import annotations

import enum
import json
import random
import re
from array import array
from dataclasses import dataclass, field

from .allocator import CategorySpace, PairAllocator
from .models import Level

HOST_ID_RULE = "letters, digits, '.', '_' and '-' only, starting with a letter or digit, at most 63"
_HOST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


def is_host_id(value: str) -> bool:
    """A host's id as svirtd.conf's [cluster] host_id allows it (an etcd key component)."""
    return _HOST_ID.fullmatch(value) is not None


@dataclass(frozen=True)
class Compare:
    """An etcd txn comparison: `target` of `key` (CREATE, MOD revision; VALUE) `result` `value`."""

    key: str
    target: str  # "CREATE" | "MOD" | "VALUE"
    value: int | str
    result: str = "EQUAL"


@dataclass(frozen=True)
class Put:
    key: str
    value: str
    lease: int = 0


@dataclass(frozen=True)
class Get:
    """Read the key, or [key, range_end)."""

    key: str
    range_end: str = ""


class Delete(Get):
    """Delete the key, or [key, range_end)."""


Op = Put | Delete | Get


@dataclass(frozen=True)
class Txn:
    compare: tuple[Compare, ...]
    success: tuple[Op, ...]
    failure: tuple[Op, ...] = ()


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: str
    create_revision: int
    mod_revision: int
    lease: int = 0


@dataclass(frozen=True)
class TxnResult:
    succeeded: bool
    revision: int
    ranges: tuple[tuple[KeyValue, ...], ...]  # one tuple per Get of the branch that ran, in order


@dataclass(frozen=True)
class Binding:
    """A guest's pair, cluster-wide: its UUID, its level, and the hosts that use it."""

    uuid: str
    level: Level
    name: str = ""
    hosts: tuple[str, ...] = ()
    mod_revision: int = 0  # of the guest key as read (0: not read from etcd)

    def with_host(self, host: str) -> Binding | None:
        """The binding with host among its users; None when it already is."""
        if host in self.hosts:
            return None
        return Binding(self.uuid, self.level, self.name, tuple(sorted({*self.hosts, host})), self.mod_revision)

    def without_host(self, host: str) -> Binding | None:
        """The binding once host stops using it; None when nobody uses it any more (delete it)."""
        rest = tuple(h for h in self.hosts if h != host)
        return Binding(self.uuid, self.level, self.name, rest, self.mod_revision) if rest else None


def prefix_end(prefix: str) -> str:
    """etcd's range_end for "every key starting with prefix" (the last byte plus one)."""
    raw = prefix.encode()
    for i in range(len(raw) - 1, -1, -1):
        if raw[i] < 0xFF:
            return (raw[:i] + bytes([raw[i] + 1])).decode("latin-1")
    return "\0"


@dataclass(frozen=True)
class KeyLayout:
    prefix: str

    @property
    def levels(self) -> str:
        return f"{self.prefix}levels/"

    @property
    def guests(self) -> str:
        return f"{self.prefix}guests/"

    @property
    def hosts(self) -> str:
        return f"{self.prefix}hosts/"

    def level_key(self, level: Level) -> str:
        return f"{self.levels}{level}"

    def guest_key(self, uuid: str) -> str:
        return f"{self.guests}{uuid}"

    def host_key(self, host: str) -> str:
        return f"{self.hosts}{host}"

    def level_of_key(self, key: str) -> Level | None:
        try:
            return Level.parse(key.removeprefix(self.levels)) if key.startswith(self.levels) else None
        except ValueError:
            return None

    # -- values ---------------------------------------------------------------------------------

    @staticmethod
    def level_value(uuid: str) -> str:
        return json.dumps({"uuid": uuid}, separators=(",", ":"))

    @staticmethod
    def owner_in(value: str) -> str | None:
        """The UUID a level key names (None when the value is not ours)."""
        try:
            owner = json.loads(value).get("uuid")
        except (ValueError, AttributeError):
            return None
        return owner if isinstance(owner, str) else None

    @staticmethod
    def guest_value(b: Binding) -> str:
        return json.dumps({"level": str(b.level), "name": b.name, "hosts": list(b.hosts)}, separators=(",", ":"))

    def binding_in(self, kv: KeyValue) -> Binding | None:
        try:
            data = json.loads(kv.value)
            return Binding(uuid=kv.key.removeprefix(self.guests), level=Level.parse(data["level"]),
                           name=str(data.get("name", "")), hosts=tuple(str(h) for h in data.get("hosts", ())),
                           mod_revision=kv.mod_revision)
        except (ValueError, KeyError, TypeError, AttributeError):
            return None

    # -- transactions ---------------------------------------------------------------------------

    def reserve(self, b: Binding) -> Txn:
        """Bind a new UUID to a pair, both keys at once, only if neither key exists; the failure branch
        reads both, so one round trip also says who holds what."""
        gkey, lkey = self.guest_key(b.uuid), self.level_key(b.level)
        return Txn(compare=(Compare(gkey, "CREATE", 0), Compare(lkey, "CREATE", 0)),
                   success=(Put(gkey, self.guest_value(b)), Put(lkey, self.level_value(b.uuid))),
                   failure=(Get(gkey), Get(lkey)))

    def update_hosts(self, b: Binding, read: Binding) -> Txn:
        """Rewrite the users of a binding as read (compare-and-swap on its mod_revision); the pair's key
        must still name the UUID."""
        gkey = self.guest_key(b.uuid)
        return Txn(compare=(Compare(gkey, "MOD", read.mod_revision),
                            Compare(self.level_key(b.level), "VALUE", self.level_value(b.uuid))),
                   success=(Put(gkey, self.guest_value(b)),), failure=(Get(gkey),))

    def drop(self, read: Binding) -> Txn:
        """Delete a binding nobody uses any more, if unchanged since read."""
        gkey = self.guest_key(read.uuid)
        return Txn(compare=(Compare(gkey, "MOD", read.mod_revision),),
                   success=(Delete(gkey), Delete(self.level_key(read.level))), failure=(Get(gkey),))

    def move(self, read: Binding, to: Level) -> Txn:
        """Re-bind a UUID to another pair (the guest runs with it): the new pair's key must not exist."""
        gkey, new = self.guest_key(read.uuid), self.level_key(to)
        moved = Binding(read.uuid, to, read.name, read.hosts)
        return Txn(compare=(Compare(gkey, "MOD", read.mod_revision), Compare(new, "CREATE", 0)),
                   success=(Put(gkey, self.guest_value(moved)), Put(new, self.level_value(read.uuid)),
                            Delete(self.level_key(read.level))),
                   failure=(Get(gkey), Get(new)))


class ClusterState(enum.StrEnum):
    LOCAL = "local"  # backend = "local": the table is this host's alone
    CONNECTING = "connecting"
    CONNECTED = "connected"
    UNAVAILABLE = "unavailable"


@dataclass
class ClusterStatus:
    state: ClusterState = ClusterState.LOCAL
    host: str = ""
    reason: str = ""  # why unavailable: what to check
    since: float = 0.0
    hosts_alive: tuple[str, ...] = ()
    pending: int = 0  # local changes not yet in etcd
    conflicts: list[str] = field(default_factory=list)

    def describe(self) -> str:
        if self.state is ClusterState.LOCAL:
            return "local (this host's table only; [cluster] backend = \"local\")"
        text = f"etcd {self.state.value} as host {self.host}"
        if self.state is ClusterState.CONNECTED:
            text += f"; hosts alive: {', '.join(self.hosts_alive) or '-'}"
        elif self.reason:
            text += f": {self.reason}; new guests are refused, guests with a known pair still start"
        if self.pending:
            text += f"; {self.pending} local changes waiting for etcd"
        if self.conflicts:
            text += f"; CONFLICTS: {'; '.join(self.conflicts[-3:])}"
        return text


class ClusterAllocator(PairAllocator):
    """A PairAllocator whose used pairs are those this host holds (reserve/release, as ever) plus those
    bound anywhere in the cluster (mirror_put/mirror_delete, from etcd's watch). A pick is still O(1): it
    comes from the pairs believed free everywhere, and the etcd transaction is the arbiter."""

    def __init__(self, space: CategorySpace, rng: random.Random | None = None) -> None:
        super().__init__(space, rng)
        self._local = array("b", bytes(space.total))
        self._bound: dict[int, str] = {}  # pair index -> UUID bound in the cluster
        self._outside: dict[Level, str] = {}  # bound pairs outside the space (admins' static labels)

    def _held(self, index: int) -> bool:
        return bool(self._local[index])

    def _hold(self, index: int) -> None:
        self._local[index] = 1
        if index not in self._bound:
            self._take(index)

    def _unhold(self, index: int) -> None:
        self._local[index] = 0
        if index not in self._bound:
            self._give(index)

    def mirror_put(self, level: Level, uuid: str) -> None:
        """etcd says the pair is bound to uuid."""
        index = self.space.index_of(level)
        if index is None:
            self._outside[level] = uuid
            return
        if index not in self._bound and not self._local[index]:
            self._take(index)
        self._bound[index] = uuid

    def mirror_delete(self, level: Level) -> None:
        index = self.space.index_of(level)
        if index is None:
            self._outside.pop(level, None)
            return
        if self._bound.pop(index, None) is not None and not self._local[index]:
            self._give(index)

    def bound_to(self, level: Level) -> str | None:
        index = self.space.index_of(level)
        return self._outside.get(level) if index is None else self._bound.get(index)

    def mirrored(self) -> dict[Level, str]:
        return {**{self.space.level_at(i): u for i, u in self._bound.items()}, **self._outside}


def mirror_diff(old: dict[Level, str], new: dict[Level, str]) -> tuple[list[Level], dict[Level, str]]:
    """What a full re-read changes in the mirror: (levels gone, levels added or re-bound)."""
    gone = [level for level in old if level not in new]
    changed = {level: uuid for level, uuid in new.items() if old.get(level) != uuid}
    return gone, changed
