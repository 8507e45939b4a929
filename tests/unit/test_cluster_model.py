"""Issue 16, the pure part: etcd key layout, transactions, bindings, the cluster-wide free view, [cluster] config."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from svirtd.allocator import CategorySpace
from svirtd.cluster_model import (
    Binding,
    ClusterAllocator,
    ClusterState,
    ClusterStatus,
    Compare,
    Delete,
    Get,
    KeyLayout,
    KeyValue,
    Put,
    mirror_diff,
    prefix_end,
)
from svirtd.config import load_config
from svirtd.errors import ConfigError, LabelSpaceExhausted
from svirtd.models import Level

L = KeyLayout("/svirt/")
U1, U2 = "11111111-1111-1111-1111-111111111111", "22222222-2222-2222-2222-222222222222"


def test_reserve_creates_both_keys_only_if_neither_exists_and_reads_both_otherwise() -> None:
    b = Binding(U1, Level(low=3, high=7), "web", ("a",))
    txn = L.reserve(b)
    assert txn.compare == (Compare(f"/svirt/guests/{U1}", "CREATE", 0), Compare("/svirt/levels/s0:c3,c7", "CREATE", 0))
    assert txn.success == (Put(f"/svirt/guests/{U1}", '{"level":"s0:c3,c7","name":"web","hosts":["a"]}'),
                           Put("/svirt/levels/s0:c3,c7", f'{{"uuid":"{U1}"}}'))
    assert txn.failure == (Get(f"/svirt/guests/{U1}"), Get("/svirt/levels/s0:c3,c7"))


def test_users_change_by_compare_and_swap_and_the_last_one_out_deletes_both_keys() -> None:
    read = L.binding_in(KeyValue(f"/svirt/guests/{U1}", '{"level":"s0:c3,c7","name":"web","hosts":["a","b"]}',
                                 create_revision=5, mod_revision=9))
    assert read is not None and read.hosts == ("a", "b") and read.mod_revision == 9
    assert read.with_host("a") is None
    assert read.with_host("c") is not None and read.with_host("c").hosts == ("a", "b", "c")  # type: ignore[union-attr]
    rest = read.without_host("a")
    assert rest is not None and rest.hosts == ("b",)
    update = L.update_hosts(rest, read)
    assert update.compare[0] == Compare(f"/svirt/guests/{U1}", "MOD", 9)
    assert update.compare[1] == Compare("/svirt/levels/s0:c3,c7", "VALUE", f'{{"uuid":"{U1}"}}')
    alone = Binding(U1, read.level, "web", ("b",), 11)
    assert alone.without_host("b") is None
    drop = L.drop(alone)
    assert drop.compare == (Compare(f"/svirt/guests/{U1}", "MOD", 11),)
    assert drop.success == (Delete(f"/svirt/guests/{U1}"), Delete("/svirt/levels/s0:c3,c7"))


def test_move_rebinds_only_to_a_pair_nobody_holds() -> None:
    read = Binding(U1, Level(low=3, high=7), "web", ("a",), 4)
    txn = L.move(read, Level(low=4, high=9))
    assert Compare("/svirt/levels/s0:c4,c9", "CREATE", 0) in txn.compare
    assert Delete("/svirt/levels/s0:c3,c7") in txn.success


def test_keys_and_values_read_back_and_garbage_is_ignored() -> None:
    assert L.level_of_key("/svirt/levels/s0:c3,c7") == Level(low=3, high=7)
    assert L.level_of_key("/svirt/levels/s0:c3") is None
    assert L.level_of_key("/other/levels/s0:c3,c7") is None
    assert L.owner_in(f'{{"uuid":"{U2}"}}') == U2
    assert L.owner_in("not json") is None and L.owner_in("[1]") is None
    assert L.binding_in(KeyValue(f"/svirt/guests/{U1}", '{"level":"x"}', 1, 1)) is None


def test_prefix_end_covers_exactly_the_prefix() -> None:
    assert prefix_end("/svirt/levels/") == "/svirt/levels0"
    assert "/svirt/levels/s0:c1,c2" < prefix_end("/svirt/levels/") <= "/svirt/levelt"


def test_cluster_allocator_counts_a_pair_used_while_this_host_or_the_cluster_holds_it() -> None:
    space = CategorySpace(range(4))  # 6 pairs
    alloc = ClusterAllocator(space, random.Random(1))
    a, b = Level(low=0, high=1), Level(low=2, high=3)
    alloc.mirror_put(a, U1)  # bound by another host
    assert not alloc.is_free(a) and alloc.free == 5 and alloc.bound_to(a) == U1
    alloc.reserve(a)  # this host joins the binding: no double count, no error
    assert alloc.free == 5
    alloc.mirror_delete(a)
    assert not alloc.is_free(a)  # still held here
    alloc.release(a)
    assert alloc.is_free(a) and alloc.free == 6
    alloc.reserve(b)
    with pytest.raises(ValueError, match="already in use"):
        alloc.reserve(b)
    alloc.mirror_put(b, U2)
    alloc.release(b)
    assert not alloc.is_free(b)  # the cluster still binds it
    outside = Level(low=10, high=11)
    alloc.mirror_put(outside, U2)  # an admin's static label outside the space
    assert alloc.bound_to(outside) == U2 and alloc.free == 5
    picks = {alloc.allocate() for _ in range(5)}
    assert b not in picks and len(picks) == 5
    with pytest.raises(LabelSpaceExhausted):
        alloc.allocate()


class ClusterAllocatorMachine(RuleBasedStateMachine):
    """Whatever the interleaving of local reservations and etcd events, free == pairs held by neither."""

    def __init__(self) -> None:
        super().__init__()
        self.space = CategorySpace(range(6))
        self.alloc = ClusterAllocator(self.space, random.Random(0))
        self.local: set[Level] = set()
        self.bound: set[Level] = set()

    levels = st.integers(0, 14)

    @rule(i=levels)
    def reserve(self, i: int) -> None:
        level = self.space.level_at(i)
        if level in self.local:
            with pytest.raises(ValueError):
                self.alloc.reserve(level)
        else:
            self.alloc.reserve(level)
            self.local.add(level)

    @rule(i=levels)
    def release(self, i: int) -> None:
        level = self.space.level_at(i)
        if level in self.local:
            self.alloc.release(level)
            self.local.discard(level)

    @rule(i=levels)
    def watch_put(self, i: int) -> None:
        self.alloc.mirror_put(self.space.level_at(i), U1)
        self.bound.add(self.space.level_at(i))

    @rule(i=levels)
    def watch_delete(self, i: int) -> None:
        self.alloc.mirror_delete(self.space.level_at(i))
        self.bound.discard(self.space.level_at(i))

    @rule()
    def allocate(self) -> None:
        if len(self.local | self.bound) < self.space.total:
            level = self.alloc.allocate()
            assert level not in self.local | self.bound
            self.local.add(level)

    @invariant()
    def free_is_what_nobody_holds(self) -> None:
        assert self.alloc.free == self.space.total - len(self.local | self.bound)


TestClusterAllocatorMachine = ClusterAllocatorMachine.TestCase
TestClusterAllocatorMachine.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)


def test_mirror_diff_after_a_full_reread() -> None:
    a, b, c = Level(low=0, high=1), Level(low=0, high=2), Level(low=0, high=3)
    gone, changed = mirror_diff({a: U1, b: U1}, {b: U2, c: U1})
    assert gone == [a] and changed == {b: U2, c: U1}


def test_status_says_what_to_check() -> None:
    status = ClusterStatus(ClusterState.UNAVAILABLE, host="h1", reason="http://e1:2379: no answer within 1 s",
                           pending=2)
    text = status.describe()
    assert "unavailable as host h1" in text and "no answer" in text and "2 local changes waiting" in text
    assert "refused" in text
    assert ClusterStatus().describe().startswith("local")


def config_with(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "svirtd.conf"
    path.write_text(text)
    return path


def test_cluster_config_defaults_to_local_and_accepts_an_etcd_section(tmp_path: Path) -> None:
    assert load_config(config_with(tmp_path, "")).cluster.backend == "local"
    c = load_config(config_with(tmp_path, '[cluster]\nbackend = "etcd"\nendpoints = ["https://10.0.0.1:2379", '
                                          '"https://10.0.0.2:2379"]\nca_file = "/etc/svirt/ca.pem"\n'
                                          'cert_file = "/etc/svirt/h1.pem"\nkey_file = "/etc/svirt/h1.key"\n'
                                          'host_id = "h1"\n')).cluster
    assert c.backend == "etcd" and len(c.endpoints) == 2 and c.prefix == "/svirt/" and c.host_id == "h1"


@pytest.mark.parametrize(("section", "named"), [
    ('backend = "etcd"', "endpoints"),
    ('backend = "zookeeper"', "cluster.backend"),
    ('backend = "etcd"\nendpoints = ["10.0.0.1:2379"]', "cluster.endpoints"),
    ('backend = "etcd"\nendpoints = ["http://h:99999"]', "cluster.endpoints"),
    ('backend = "etcd"\nendpoints = ["https://h:2379"]\ncert_file = "/c.pem"', "key_file"),
    ('backend = "etcd"\nendpoints = ["http://h:2379"]\ncert_file = "/c.pem"\nkey_file = "/k"', "cert_file"),
    ('ca_file = "ca.pem"', "cluster.ca_file"),
    ('prefix = "svirt"', "cluster.prefix"),
    ('host_id = "a b"', "cluster.host_id"),
    ("lease_seconds = 1", "cluster.lease_seconds"),
    ("colour = 1", "cluster.colour"),
])
def test_cluster_config_errors_name_the_option(tmp_path: Path, section: str, named: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(config_with(tmp_path, f"[cluster]\n{section}\n"))
    assert named in str(exc.value), str(exc.value)
