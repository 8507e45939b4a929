"""Issue 16: labels unique across a cluster -- the allocation table on a real 3-member etcd cluster (loopback).

Two hosts: host A is svirtd on the testbed's private libvirtd and bus; host B is a second svirtd with its
own private bus, its own state dir and its own libvirt connection (libvirt's test driver, loaded from a
node file the test writes: B's "definitions"). etcd members are killed and started again to stand for
crashes and partitions; every member, bus and daemon is stopped after each test, pass or fail.
"""

from __future__ import annotations

import asyncio
import functools
import re
import secrets
import shutil
import sqlite3
import subprocess
import tempfile
import uuid as uuidlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from svirtd.cluster_model import KeyLayout, prefix_end
from svirtd.etcd_client import EtcdClient, EtcdUnavailable
from svirtd.level_claims import LevelClaim, LevelSource
from svirtd.models import Level
from testbed.bus import PrivateBus
from testbed.client import CallFailed, SvirtClient
from testbed.cluster_host import ClusterHost
from testbed.daemon import SVIRTD, SvirtdProcess
from testbed.etcd import ETCD, EtcdCluster, make_tls
from testbed.guests import GuestFactory
from tests.conftest import wait_until
from tests.helpers import call, run

SVIRTCTL = SVIRTD.parent / "svirtctl"

pytestmark = pytest.mark.integration
StartSvirtd = Callable[..., SvirtdProcess]
REPO = Path(__file__).resolve().parents[2]
ERROR = "org.svirt.Manager1.Error."


@pytest.fixture(scope="module")
def etcd_members(as_root: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    if not Path(ETCD).exists():  # like every other real part: installed by the project's own script
        subprocess.run([str(REPO / "scripts" / "install-deps.sh")], check=True, timeout=900)
    cluster = EtcdCluster(tmp_path_factory.mktemp("etcd")).start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def etcd(etcd_members: EtcdCluster) -> Iterator[EtcdCluster]:
    """The cluster with every member up (a test before may have killed some); members a test kills are
    started again after it."""
    for i in range(len(etcd_members.names)):
        etcd_members.start_member(i)
    etcd_members.wait_healthy(60)
    yield etcd_members
    for i in range(len(etcd_members.names)):
        etcd_members.start_member(i)


@pytest.fixture
def prefix() -> str:
    """Each test its own key prefix: tests never see each other's bindings."""
    return f"/svirt-test-{secrets.token_hex(4)}/"


def cluster_conf(etcd: EtcdCluster, prefix: str, host: str) -> dict[str, object]:
    return {"backend": "etcd", "endpoints": etcd.endpoints, "prefix": prefix, "host_id": host,
            "lease_seconds": 3, "timeout_seconds": 1.0}


@pytest.fixture
def host_b(tmp_path: Path, guests: GuestFactory) -> Iterator[Callable[..., tuple[SvirtdProcess, PrivateBus]]]:
    """Start host B: its own bus, state and libvirt (test driver over a node file of domain XMLs)."""
    started: list[tuple[SvirtdProcess, PrivateBus, Path]] = []

    def start(domain_xmls: list[str], **config: object) -> tuple[SvirtdProcess, PrivateBus]:
        workdir = Path(tempfile.mkdtemp(prefix="svirtd-host-b-", dir=tmp_path))
        node = workdir / "node.xml"
        node.write_text("<node>\n" + "\n".join(domain_xmls) + "\n</node>\n")
        bus_dir = Path(tempfile.mkdtemp(prefix="svt-b-"))  # short: a unix socket path has ~108 bytes
        bus = PrivateBus(bus_dir).start()
        proc = SvirtdProcess(workdir / "svirtd", bus.address, f"test://{node}", workdir / "hook.env",
                             auto_confine_names=[f"{guests.prefix}-*"], **config)
        started.append((proc, bus, bus_dir))
        proc.start()
        return proc, bus

    yield start
    problems = []
    for proc, bus, bus_dir in started:
        proc.stop()
        bus.stop()
        problems.append(bus.stderr_text())
        shutil.rmtree(bus_dir)
    assert not any("Encountered error" in text for text in problems), problems


def for_test_driver(xml: str, name: str | None = None, uuid: str | None = None) -> str:
    """A domain XML as host B's libvirt (the test driver) takes it; optionally another name and UUID."""
    xml = re.sub(r"<domain type='[a-z]+'", "<domain type='test'", xml, count=1)
    xml = re.sub(r"<domain type=\"[a-z]+\"", "<domain type='test'", xml, count=1)
    xml = re.sub(r"<emulator>.*?</emulator>", "", xml)
    if name is not None:
        xml = re.sub(r"<name>.*?</name>", f"<name>{name}</name>", xml, count=1)
    if uuid is not None:
        xml = re.sub(r"<uuid>.*?</uuid>", f"<uuid>{uuid}</uuid>", xml, count=1)
    return xml


def level_on(bus: PrivateBus, guest: str) -> str:
    return str(run(call(bus, "Query", "s", guest))["level"])


def cluster_state(bus: PrivateBus) -> str:
    async def get() -> str:
        async with SvirtClient(bus.address) as c:
            return str(await c.prop("ClusterState"))
    return str(run(get()))


def bindings(etcd: EtcdCluster, prefix: str) -> dict[str, tuple[str, tuple[str, ...]]]:
    """uuid -> (level, hosts), as etcd has them."""
    async def read() -> dict[str, tuple[str, tuple[str, ...]]]:
        client = EtcdClient(tuple(etcd.endpoints), 2.0)
        layout = KeyLayout(prefix)
        try:
            kvs, _rev = await client.range(layout.guests, prefix_end(layout.guests))
        finally:
            await client.close()
        found = [b for b in (layout.binding_in(kv) for kv in kvs) if b is not None]
        return {b.uuid: (str(b.level), b.hosts) for b in found}
    result: dict[str, tuple[str, tuple[str, ...]]] = run(read())
    return result


def test_same_uuid_and_copied_definitions_keep_the_pair_on_another_host(
        etcd: EtcdCluster, prefix: str, svirtd: StartSvirtd, guests: GuestFactory,
        host_b: Callable[..., tuple[SvirtdProcess, PrivateBus]], bus: PrivateBus) -> None:
    svirtd(cluster=cluster_conf(etcd, prefix, "host-a"))
    g1, g2 = guests.new(), guests.new()
    level1 = wait_until(lambda: level_on(bus, g1.uuid), what="host A isolates g1")
    level2 = wait_until(lambda: level_on(bus, g2.uuid), what="host A isolates g2")
    dumped = guests.virsh("dumpxml", g1.name).stdout  # with svirtd's metadata: a definition copied to B
    assert "svirt" in dumped and str(level1) in dumped
    clone = str(uuidlib.uuid4())
    clone_disk = g1.disk.with_name(f"{guests.prefix}-clone.img")
    shutil.copy(g1.disk, clone_disk)  # its own copy of the image (a shared one would be refused as a conflict)
    _b, bus_b = host_b([
        for_test_driver(dumped),  # the definition copied from A (its metadata names A's pair)
        for_test_driver(g2.xml),  # the same UUID defined afresh on B (no metadata): the pair comes from etcd
        for_test_driver(dumped.replace(str(g1.disk), str(clone_disk)), name=f"{guests.prefix}-clone",
                        uuid=clone),  # a copy of the definition and image under a new identity
    ], cluster=cluster_conf(etcd, prefix, "host-b"))
    assert wait_until(lambda: level_on(bus_b, g1.uuid), what="host B isolates g1") == level1
    assert level_on(bus_b, g2.uuid) == level2
    clone_report = run(call(bus_b, "Query", "s", clone))
    assert clone_report["level"] not in (level1, level2), clone_report
    assert "re-mapped" in clone_report["note"] and g1.uuid in clone_report["note"], clone_report["note"]
    table = bindings(etcd, prefix)
    assert table[g1.uuid] == (level1, ("host-a", "host-b"))
    assert table[g2.uuid] == (level2, ("host-a", "host-b"))
    assert table[clone] == (clone_report["level"], ("host-b",))
    wait_until(lambda: "hosts alive: host-a, host-b" in cluster_state(bus), what="A sees B alive (its lease)")
    print(f"cluster state on A: {cluster_state(bus)}")


def test_two_uuids_racing_for_one_pair_never_both_get_it(etcd: EtcdCluster, prefix: str, tmp_path: Path) -> None:
    """Both hosts claim the same pair for different UUIDs (e.g. a copied image's label), 40 times at once."""
    async def scenario() -> None:
        a = await ClusterHost(tmp_path, "host-a", etcd.endpoints, prefix=prefix, timeout=1.0).start()
        b = await ClusterHost(tmp_path, "host-b", etcd.endpoints, prefix=prefix, timeout=1.0).start()
        try:
            winners = {"host-a": 0, "host-b": 0}
            for i in range(40):
                wanted = Level(low=i, high=1000)
                claim = (LevelClaim(wanted, LevelSource.METADATA),)
                ua, ub = str(uuidlib.uuid4()), str(uuidlib.uuid4())
                la, lb = await asyncio.gather(a.isolate(ua, claims=claim), b.isolate(ub, claims=claim))
                assert la != lb and wanted in (la, lb), (la, lb)
                winners["host-a" if la == wanted else "host-b"] += 1
            print(f"claimed pair won by: {winners}")
            layout = KeyLayout(prefix)
            kvs, _rev = await a.client.range(layout.levels, prefix_end(layout.levels))
            assert len(kvs) == 80 and len({kv.key for kv in kvs}) == 80
        finally:
            await a.stop()
            await b.stop()

    asyncio.run(scenario())


def test_etcd_without_quorum_refuses_new_guests_known_ones_start_and_all_is_reconciled(
        etcd: EtcdCluster, prefix: str, svirtd: StartSvirtd, guests: GuestFactory, bus: PrivateBus) -> None:
    svirtd(cluster=cluster_conf(etcd, prefix, "host-a"))
    known, kept, gone = guests.new(), guests.new(), guests.new()
    levels = {g.uuid: wait_until(functools.partial(level_on, bus, g.uuid), what=f"{g.name} isolated")
              for g in (known, kept, gone)}
    run(call(bus, "Release", "s", kept.uuid))  # an admin's Release: still defined, its binding stays

    etcd.kill(0)
    etcd.kill(1)
    wait_until(lambda: "unavailable" in cluster_state(bus), what="svirtd notices etcd lost its quorum")
    fresh = guests.new()
    with pytest.raises(CallFailed) as refused:
        run(call(bus, "Isolate", "ss", fresh.uuid, ""))
    assert refused.value.name == ERROR + "ClusterUnavailable", refused.value
    assert "etcd" in refused.value.text and "etcdctl endpoint health" in refused.value.text
    # Guests whose pair is known here: an isolated one starts, a released one is isolated again with its pair.
    guests.virsh("start", known.name)
    assert run(call(bus, "Query", "s", known.uuid))["state"] == "running"
    guests.virsh("destroy", known.name)
    assert run(call(bus, "Isolate", "ss", kept.uuid, ""))["level"] == levels[kept.uuid]
    guests.virsh("undefine", gone.name)  # released while etcd is away: etcd hears of it later
    wait_until(lambda: gone.uuid not in [r[0] for r in run(call(bus, "List"))], what="gone released locally")
    assert "1 local changes waiting for etcd" in cluster_state(bus)
    print(f"while down: {cluster_state(bus)}")

    etcd.start_member(0)
    etcd.start_member(1)
    etcd.wait_healthy(60)
    wait_until(lambda: "connected" in cluster_state(bus) and "waiting" not in cluster_state(bus), timeout=60,
               what="svirtd reconnects and settles what it owes etcd")
    fresh_level = wait_until(lambda: level_on(bus, fresh.uuid), timeout=60,
                             what="the guest refused while etcd was away is isolated once it is back")
    table = bindings(etcd, prefix)
    assert gone.uuid not in table
    assert table[kept.uuid][0] == levels[kept.uuid] and table[known.uuid][0] == levels[known.uuid]
    assert table[fresh.uuid][0] == fresh_level
    assert len({level for level, _hosts in table.values()}) == len(table)


def test_forget_host_frees_a_dead_hosts_pairs_and_refuses_while_it_lives(
        etcd: EtcdCluster, prefix: str, svirtd: StartSvirtd, guests: GuestFactory, bus: PrivateBus,
        host_b: Callable[..., tuple[SvirtdProcess, PrivateBus]]) -> None:
    svirtd(cluster=cluster_conf(etcd, prefix, "host-a"))
    shared = guests.new()
    level = wait_until(lambda: level_on(bus, shared.uuid), what="A isolates the shared guest")
    only_b = guests.new(define=False, name=f"{guests.prefix}-only-b")
    b, bus_b = host_b([for_test_driver(shared.xml), for_test_driver(only_b.xml)],
                      cluster=cluster_conf(etcd, prefix, "host-b"))
    wait_until(lambda: level_on(bus_b, only_b.uuid), what="B isolates its own guest")
    wait_until(lambda: "host-b" in cluster_state(bus), what="A sees B alive")

    def forget(host: str) -> tuple[int, str]:
        """svirtctl cluster forget-host HOST, the real command line."""
        done = subprocess.run([str(SVIRTCTL), "--bus-address", bus.address, "--no-ask-password", "cluster",
                               "forget-host", host], capture_output=True, text=True, timeout=60)
        return done.returncode, done.stdout + done.stderr

    code, text = forget("host-b")
    assert code == 2 and "alive" in text, text  # InvalidArgument: exit 2 (svirtctl(1))
    assert only_b.uuid in bindings(etcd, prefix)
    b.stop()  # its lease is revoked as it stops: the host is no longer alive
    wait_until(lambda: "host-b" not in cluster_state(bus), what="B's lease gone")
    # Not for everybody (the bus lets the call through, svirtd asks polkit; none runs here: root only).
    denied = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "dbus-send",
                             f"--bus={bus.address}", "--print-reply", "--dest=org.svirt.Manager", "/org/svirt/Manager",
                             "org.svirt.Manager1.ForgetHost", "string:host-b"], capture_output=True, text=True,
                            timeout=60)
    assert "org.freedesktop.DBus.Error.AccessDenied" in denied.stderr and "only root" in denied.stderr, denied.stderr
    code, text = forget("host-b")
    assert code == 0 and "forgot host host-b" in text, text
    table = bindings(etcd, prefix)
    assert only_b.uuid not in table  # only B used it: freed
    assert table[shared.uuid] == (level, ("host-a",))  # A still uses it: kept, B taken out


def test_local_backend_needs_no_etcd(svirtd: StartSvirtd, guests: GuestFactory, bus: PrivateBus) -> None:
    """The default: nothing else to run; ClusterState says so and ForgetHost explains why it cannot."""
    svirtd()
    assert cluster_state(bus) == "local"
    with pytest.raises(CallFailed) as exc:
        run(call(bus, "ForgetHost", "s", "host-x"))
    assert exc.value.name == ERROR + "InvalidArgument"


def test_a_host_id_that_cannot_be_one_is_refused_before_anything_is_asked(svirtd: StartSvirtd,
                                                                          bus: PrivateBus) -> None:
    """ForgetHost checks its argument as svirtd.conf checks host_id, before polkit is asked (a caller's
    megabytes are no action detail) and before the backend is."""
    svirtd()
    for bad in ("", "../host", "host b", "h" * 64, "x\u00e9"):
        with pytest.raises(CallFailed) as exc:
            run(call(bus, "ForgetHost", "s", bad))
        assert exc.value.name == ERROR + "InvalidArgument" and "not a host id" in exc.value.text, (bad, exc.value)


def test_pending_releases_and_lost_rows_survive_a_crash_of_svirtd(
        etcd: EtcdCluster, prefix: str, svirtd: StartSvirtd, guests: GuestFactory, bus: PrivateBus) -> None:
    """svirtd killed (SIGKILL) while etcd has no quorum and a release waits for it; its cache row of another
    guest lost as well (the one write svirtd does not fsync). After a restart with etcd back: settled."""
    proc = svirtd(cluster=cluster_conf(etcd, prefix, "host-a"))
    kept, gone = guests.new(), guests.new()
    levels = {g.uuid: wait_until(functools.partial(level_on, bus, g.uuid), what=f"{g.name} isolated")
              for g in (kept, gone)}
    etcd.kill(0)
    etcd.kill(1)
    wait_until(lambda: "unavailable" in cluster_state(bus), what="svirtd notices etcd lost its quorum")
    guests.virsh("undefine", gone.name)
    wait_until(lambda: "1 local changes waiting" in cluster_state(bus), what="the release is recorded")
    proc.kill()
    database = proc.state_dir / "state.db"
    with sqlite3.connect(database) as db:  # as if the unsynced row of `kept` was lost with the crash
        db.execute("DELETE FROM cluster_bindings WHERE uuid = ?", (kept.uuid,))
    db.close()
    etcd.start_member(0)
    etcd.start_member(1)
    etcd.wait_healthy(60)
    proc.start()
    wait_until(lambda: "connected" in cluster_state(bus) and "waiting" not in cluster_state(bus), timeout=60,
               what="the pending release reaches etcd after the restart")
    table = bindings(etcd, prefix)
    assert gone.uuid not in table
    assert table[kept.uuid] == (levels[kept.uuid], ("host-a",))
    with sqlite3.connect(database) as db:
        rows = dict(db.execute("SELECT uuid, state FROM cluster_bindings").fetchall())
    db.close()
    assert rows == {kept.uuid: "bound"}, rows
    assert level_on(bus, kept.uuid) == levels[kept.uuid]


def test_tls_endpoints_with_a_client_certificate(as_root: None, tmp_path: Path) -> None:
    """[cluster] ca_file/cert_file/key_file against members that demand a client certificate of their CA."""
    if not Path(ETCD).exists():
        subprocess.run([str(REPO / "scripts" / "install-deps.sh")], check=True, timeout=900)
    tls = make_tls(tmp_path / "tls")
    cluster = EtcdCluster(tmp_path / "etcd-tls", members=1, tls=tls).start()

    async def scenario() -> None:
        host = await ClusterHost(tmp_path, "host-tls", cluster.endpoints, timeout=1.0, tls=tls).start()
        try:
            assert host.book.available, host.book.describe()
            level = await host.isolate(str(uuidlib.uuid4()))
            assert host.allocator.bound_to(level) is not None
        finally:
            await host.stop()
        plain = EtcdClient(tuple(cluster.endpoints), 1.0, ca_file=str(tls / "ca.pem"))  # no client certificate
        try:
            with pytest.raises(EtcdUnavailable):
                await plain.range("/svirt/")
        finally:
            await plain.close()

    try:
        asyncio.run(scenario())
    finally:
        cluster.stop()


def test_a_guest_adopting_the_pair_it_runs_with_moves_its_binding(etcd: EtcdCluster, prefix: str,
                                                                   tmp_path: Path) -> None:
    """The manager follows a running label (note_moved): etcd re-binds the UUID from the old pair to the new."""
    async def scenario() -> None:
        host = await ClusterHost(tmp_path, "host-a", etcd.endpoints, prefix=prefix, timeout=1.0).start()
        try:
            u = str(uuidlib.uuid4())
            old = await host.isolate(u)
            new = Level(low=1020, high=1023)
            host.levels.take(new, u)
            host.store.update_assignment(u, level=str(new))
            host.levels.give_back(old)
            host.book.note_moved(u, u[:8], old, new)
            for _ in range(100):
                row = host.store.cluster_binding(u)
                if row is not None and row.state == "bound":
                    break
                await asyncio.sleep(0.05)
            layout = KeyLayout(prefix)
            kvs, _rev = await host.client.range(layout.guest_key(u))
            binding = layout.binding_in(kvs[0])
            assert binding is not None and binding.level == new
            old_key, _rev = await host.client.range(layout.level_key(old))
            assert old_key == [] and host.allocator.bound_to(old) is None
        finally:
            await host.stop()

    asyncio.run(scenario())


def test_a_host_with_a_local_table_publishes_it_and_reports_what_etcd_gave_away(
        etcd: EtcdCluster, prefix: str, tmp_path: Path) -> None:
    """A host switched from backend = "local" to "etcd": its pairs are bound in etcd at the first connect; a
    pair another host bound meanwhile for another guest is a conflict, shown and never overwritten."""
    async def scenario() -> None:
        b = await ClusterHost(tmp_path, "host-b", etcd.endpoints, prefix=prefix, timeout=1.0).start()
        a = ClusterHost(tmp_path, "host-a", etcd.endpoints, prefix=prefix, timeout=1.0)
        try:
            clash, fine = Level(low=5, high=6), Level(low=7, high=8)
            other, mine, clashing = (str(uuidlib.uuid4()) for _ in range(3))
            assert await b.isolate(other, claims=(LevelClaim(clash, LevelSource.METADATA),)) == clash
            a.record(clashing, clash, "old-db")  # the local table a had before
            a.record(mine, fine, "old-web")
            await a.start()
            for _ in range(100):
                row = a.store.cluster_binding(mine)
                if "CONFLICTS" in a.book.describe() and row is not None and row.state == "bound":
                    break
                await asyncio.sleep(0.05)
            state = a.book.describe()
            assert "CONFLICTS" in state and str(clash) in state and other in state, state
            layout = KeyLayout(prefix)
            kvs, _rev = await a.client.range(layout.guest_key(mine))
            published = layout.binding_in(kvs[0])
            assert published is not None and (published.level, published.hosts) == (fine, ("host-a",))
            owner, _rev = await a.client.range(layout.level_key(clash))
            assert layout.owner_in(owner[0].value) == other  # not overwritten
        finally:
            await a.stop()
            await b.stop()

    asyncio.run(scenario())


def test_a_host_forgotten_while_away_binds_its_pairs_again_or_reports_the_clash(
        etcd: EtcdCluster, prefix: str, tmp_path: Path) -> None:
    """An admin forgets host A while it is down; its pairs go back to the pool and one is taken by another
    guest. When A comes back its guests' pairs are bound again, and the clash is shown, never overwritten."""
    async def scenario() -> None:
        a = await ClusterHost(tmp_path, "host-a", etcd.endpoints, prefix=prefix, timeout=1.0).start()
        b = await ClusterHost(tmp_path, "host-b", etcd.endpoints, prefix=prefix, timeout=1.0).start()
        again: ClusterHost | None = None
        try:
            kept, clashing, newcomer = (str(uuidlib.uuid4()) for _ in range(3))
            kept_level, clash_level = await a.isolate(kept), await a.isolate(clashing)
            await a.stop()  # its lease is revoked: A is not alive
            assert await b.book.forget_host("host-a") == 2
            claim = (LevelClaim(clash_level, LevelSource.METADATA),)
            assert await b.isolate(newcomer, claims=claim) == clash_level
            again = await ClusterHost(tmp_path, "host-a", etcd.endpoints, prefix=prefix, timeout=1.0).start()
            layout = KeyLayout(prefix)
            for _ in range(100):
                kvs, _rev = await again.client.range(layout.guest_key(kept))
                if kvs and "CONFLICTS" in again.book.describe():
                    break
                await asyncio.sleep(0.05)
            rebound = layout.binding_in(kvs[0]) if kvs else None
            assert rebound is not None and (rebound.level, rebound.hosts) == (kept_level, ("host-a",))
            state = again.book.describe()
            assert str(clash_level) in state and newcomer in state, state
            owner, _rev = await again.client.range(layout.level_key(clash_level))
            assert layout.owner_in(owner[0].value) == newcomer
        finally:
            if again is not None:
                await again.stop()
            await b.stop()

    asyncio.run(scenario())


def test_allocations_go_to_the_leader_and_follow_it_when_it_moves(etcd: EtcdCluster, prefix: str,
                                                                  tmp_path: Path) -> None:
    """A write a follower receives is forwarded to the leader and answered after the follower applied it:
    hops the allocation's latency need not pay. Counted by each member's own Txn counter."""
    def served() -> list[int]:
        return [etcd.txns_served(i) for i in range(len(etcd.names))]

    async def allocate(host: ClusterHost, n: int) -> None:
        for _ in range(n):
            await host.isolate(str(uuidlib.uuid4()))

    async def scenario() -> None:
        etcd.move_leader(len(etcd.names) - 1)  # not the first endpoint, which a client tries first
        a = await ClusterHost(tmp_path, "host-a", etcd.endpoints, prefix=prefix, timeout=1.0,
                              lease_seconds=3).start()
        try:
            for leader in (len(etcd.names) - 1, 1):
                if etcd.leader() != leader:
                    etcd.move_leader(leader)
                    await asyncio.sleep(1.5)  # one lease renewal (lease_seconds / 3): the client asks again
                before = served()
                await allocate(a, 20)
                grew = [now - was for now, was in zip(served(), before, strict=True)]
                assert grew[leader] >= 20 and sum(grew) == grew[leader], (leader, grew)
        finally:
            await a.stop()

    asyncio.run(scenario())


def test_a_joined_bindings_row_lost_with_a_power_cut_comes_back_from_etcd(etcd: EtcdCluster, prefix: str,
                                                                          tmp_path: Path) -> None:
    """A host taking a UUID bound on another host writes its row without an fsync: if the row is lost,
    etcd lists the host in the binding, and the next connect records it again (the guest is isolated
    here) -- the same pair, nothing freed."""
    async def scenario() -> None:
        a = await ClusterHost(tmp_path, "host-a", etcd.endpoints, prefix=prefix, timeout=1.0).start()
        b = await ClusterHost(tmp_path, "host-b", etcd.endpoints, prefix=prefix, timeout=1.0).start()
        again: ClusterHost | None = None
        try:
            guest = str(uuidlib.uuid4())
            level = await a.isolate(guest)
            try:
                assert await b.isolate(guest) == level
            finally:
                await b.stop()
            with sqlite3.connect(tmp_path / "host-b" / "state.db") as db:  # the unsynced row, lost
                assert db.execute("DELETE FROM cluster_bindings WHERE uuid = ?", (guest,)).rowcount == 1
            db.close()
            again = await ClusterHost(tmp_path, "host-b", etcd.endpoints, prefix=prefix, timeout=1.0).start()
            row = again.store.cluster_binding(guest)
            assert row is not None and row.level == str(level), row
            kvs, _rev = await a.client.range(KeyLayout(prefix).guest_key(guest))
            binding = KeyLayout(prefix).binding_in(kvs[0])
            assert binding is not None and binding.level == level
            assert sorted(binding.hosts) == ["host-a", "host-b"], binding
        finally:
            await a.stop()
            if again is not None:
                await again.stop()

    asyncio.run(scenario())
