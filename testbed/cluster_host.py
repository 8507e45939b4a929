"""One "host" of an svirtd cluster in-process: its own store, allocator, LevelBook and ClusterBook against a
real etcd -- the allocation layer as the manager drives it, without libvirt (benches and race tests run
thousands of allocations per minute this way)."""

from __future__ import annotations

import time
from pathlib import Path

from svirtd.allocator import CategorySpace
from svirtd.cluster_book import ClusterBook
from svirtd.cluster_model import ClusterAllocator
from svirtd.config import ClusterConfig
from svirtd.etcd_client import EtcdClient
from svirtd.level_book import LevelBook
from svirtd.level_claims import LevelClaim
from svirtd.models import Assignment, GuestState, Level, Origin
from svirtd.store import Store


class ClusterHost:
    def __init__(self, workdir: Path, host: str, endpoints: list[str], categories: range = range(1024),
                 prefix: str = "/svirt/", timeout: float = 0.5, lease_seconds: int = 3,
                 tls: Path | None = None) -> None:
        self.host = host
        self.store = Store(workdir / host / "state.db")
        self.allocator = ClusterAllocator(CategorySpace(categories))
        for _uuid, level in self.store.levels():
            self.allocator.reserve(level)
        self.levels = LevelBook(self.store, self.allocator)
        files = {} if tls is None else {"ca_file": str(tls / "ca.pem"), "cert_file": str(tls / "client.pem"),
                                        "key_file": str(tls / "client-key.pem")}
        self.settings = ClusterConfig(backend="etcd", endpoints=tuple(endpoints), prefix=prefix, host_id=host,
                                      timeout_seconds=timeout, lease_seconds=lease_seconds, **files)
        c = self.settings
        self.client = EtcdClient(c.endpoints, timeout, c.ca_file, c.cert_file, c.key_file)
        self.book = ClusterBook(self.settings, host, self.store, self.levels, self.allocator, self.client)

    async def start(self) -> ClusterHost:
        await self.book.start()
        await self.book.wait_first_attempt(10)
        return self

    async def stop(self) -> None:
        await self.book.stop()
        self.store.close()

    async def isolate(self, uuid: str, name: str = "", claims: tuple[LevelClaim, ...] = ()) -> Level:
        """As the manager's first isolation: a guest isolated here keeps its pair without asking etcd."""
        known = self.store.get(uuid)
        if known is not None:
            return known.level
        level, _note = await self.book.choose(uuid, name or uuid[:8], claims)
        self.record(uuid, level, name)
        return level

    def record(self, uuid: str, level: Level, name: str = "") -> None:
        """The assignment row, as the manager inserts it once the pair is chosen."""
        now = time.time()
        self.store.insert_assignment(Assignment(uuid=uuid, name=name or uuid[:8], level=level, profile="default",
                                                origin=Origin.AUTO, state=GuestState.SHUTOFF, created=now,
                                                updated=now))

    async def undefine(self, uuid: str) -> None:
        """As the manager's release of a guest gone from this host."""
        a = self.store.get(uuid)
        if a is not None:
            self.store.delete_assignment(uuid)
            self.levels.give_back(a.level)
        await self.book.release(uuid)

    def release_kept(self, uuid: str) -> None:
        """As an admin's Release: the guest stays defined here, so its binding (and the cache of it) stays."""
        a = self.store.get(uuid)
        assert a is not None
        self.store.delete_assignment(uuid)
        self.levels.give_back(a.level)
