"""Issue 17: containment profiles as SELinux types, control planes in the proof, guest groups.

svirtd.pp (with svirt_nonet_t) is installed into a COPY of the host's policy store with neverallow
checking on (expand-check=1); every decision below comes from libsepol on the compiled result
(audit2why, MCS constraints included), for every profile against every object class of the
control-plane table, and from real svirtd guests for groups and profiles.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import selinux

from svirtd.isolation import ControlPlane, Object, Subject, control_planes, prove_isolation
from svirtd.models import ResourceClass
from svirtd.policy_judge import PolicyJudge, Verdict
from svirtd.profiles import PROFILES
from testbed.bus import PrivateBus
from testbed.daemon import SvirtdProcess
from testbed.guests import Disk, GuestFactory, make_disk
from testbed.policy_store import REPO, build_module, store_with_svirtd
from tests.conftest import wait_until
from tests.helpers import call, run

pytestmark = pytest.mark.integration
StartSvirtd = Callable[..., SvirtdProcess]
DEFAULT_TYPE = "svirt_t"  # the host policy's virtual_domain_context
IMAGE = "system_u:object_r:svirt_image_t:"


@dataclass(frozen=True)
class Compiled:
    judge: PolicyJudge
    root: Path  # the store copy: its file_contexts carry svirtd.fc


@pytest.fixture(scope="module")
def compiled(as_root: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Compiled]:
    work = tmp_path_factory.mktemp("policy-profiles")
    store = store_with_svirtd(work / "root", work / "build")
    yield Compiled(PolicyJudge(store.policy_file), work / "root")
    shutil.rmtree(work)


def decide_with(judge: PolicyJudge) -> Callable[[str, str, str, list[str]], tuple[bool, str]]:
    def decide(s: str, t: str, c: str, p: list[str]) -> tuple[bool, str]:
        d = judge.decide(s, t, c, p)
        return d.allowed, d.verdict.name
    return decide


def planes_of(root: Path) -> tuple[ControlPlane, ...]:
    """Control-plane labels as the compiled policy's own file_contexts give them."""
    selinux.matchpathcon_init(str(root / "etc/selinux/default/contexts/files/file_contexts"))

    def lookup(path: str, mode: int) -> str | None:
        try:
            return str(selinux.matchpathcon(path, mode)[1])
        except OSError:
            return None
    try:
        return control_planes(lookup, "/var/lib/svirtd")
    finally:
        selinux.matchpathcon_fini()


def selinux_xattr(path: Path) -> bytes:
    try:
        return os.getxattr(path, "security.selinux")
    except OSError:  # none written yet
        return b""


def label(type_: str, level: str) -> str:
    return f"system_u:system_r:{type_}:{level}"


def test_profile_types_are_valid_and_mcs_constrained(compiled: Compiled) -> None:
    judge = compiled.judge
    for profile in PROFILES.values():
        assert judge.valid_context(label(profile.process_type or DEFAULT_TYPE, "s0:c1,c2")), profile.name
    nonet = label("svirt_nonet_t", "s0:c1,c2")
    # The MCS constraint, not a missing rule, keeps a nonet guest from another guest's image...
    assert judge.decide(nonet, IMAGE + "s0:c3,c4", "file", ["read"]).verdict is Verdict.CONSTRAINT
    assert judge.decide(nonet, IMAGE + "s0:c1,c2", "file", ["read"]).allowed
    # ... and libvirtd may start it (transition) and talk to its monitor.
    virtd = "system_u:system_r:virtd_t:s0-s0:c0.c1023"
    assert judge.decide(virtd, nonet, "process", ["transition"]).allowed
    assert judge.decide(virtd, nonet, "unix_stream_socket", ["connectto"]).allowed
    assert judge.decide(nonet, "system_u:object_r:qemu_exec_t:s0", "file", ["entrypoint"]).allowed


def test_every_profile_against_every_control_plane(compiled: Compiled) -> None:
    """The table of issue 17: profile x object class, judged on the compiled policy."""
    planes = planes_of(compiled.root)
    by_path = {p.path: p for p in planes}
    assert by_path["/dev/kvm"].label.split(":")[2] == "kvm_device_t"
    assert by_path["/dev/vhost-net"].label.split(":")[2] == "vhost_device_t"
    assert by_path["/dev/net/tun"].label.split(":")[2] == "tun_tap_device_t"
    assert by_path["/etc/shadow"].label.split(":")[2] == "shadow_t"
    assert by_path["/var/lib/svirtd/state.db"].label.split(":")[2] == "svirtd_var_lib_t"
    judge = compiled.judge
    subjects = [Subject(f"uuid-{name}", name, label(p.process_type or DEFAULT_TYPE, f"s0:c{10 + 2 * i},c{11 + 2 * i}"),
                        network=p.network, image_label=IMAGE + f"s0:c{10 + 2 * i},c{11 + 2 * i}")
                for i, (name, p) in enumerate(sorted(PROFILES.items()))]
    proof = prove_isolation(subjects, [], decide_with(judge), planes)
    assert proof.ok, [v.message for v in proof.violations]
    assert proof.ordered_pairs == 6 and proof.checks >= 3 * (len(planes) + 2 * 4)
    # The same table, spelled out with audit2why's verdicts.
    for s in subjects:
        network = PROFILES[s.name].network
        for path in ("/dev/net/tun", "/dev/vhost-net"):
            got = judge.decide(s.label, by_path[path].label, "chr_file", ["open", "read", "write"])
            assert got.allowed is network, (s.name, path, got)
            if not network:
                assert got.verdict is Verdict.TERULE  # no rule at all: the type, not the pair
        assert judge.decide(s.label, by_path["/dev/kvm"].label, "chr_file", ["open", "read", "write", "ioctl"]).allowed
        for tclass in ("tcp_socket", "udp_socket"):
            assert judge.decide(s.label, s.label, tclass, ["create"]).allowed is (network and tclass == "tcp_socket")
        assert judge.decide(s.label, s.label, "unix_stream_socket", ["create", "connect"]).allowed
        assert not judge.decide(s.label, by_path["/etc/shadow"].label, "file", ["read"]).allowed
        assert not judge.decide(s.label, by_path["/etc/passwd"].label, "file", ["write"]).allowed
        for other in subjects:
            if other is s:
                continue
            assert not judge.decide(s.label, other.image_label, "sock_file", ["write"]).allowed
            assert not judge.decide(s.label, other.label, "unix_stream_socket", ["connectto"]).allowed


def test_a_profile_in_the_wrong_type_is_named_with_the_object(compiled: Compiled) -> None:
    """A nonet guest whose qemu runs as svirt_t (a label svirtd did not write) may open the tap."""
    forged = Subject("uuid-x", "mail07", label(DEFAULT_TYPE, "s0:c5,c6"), network=False, image_label=IMAGE + "s0:c5,c6")
    proof = prove_isolation([forged], [], decide_with(compiled.judge), planes_of(compiled.root))
    found = {(v.kind, v.path) for v in proof.violations}
    assert ("control-allowed", "/dev/net/tun") in found and ("control-allowed", "/dev/vhost-net") in found
    assert any("guest mail07 may open /dev/net/tun" in v.message and "its profile forbids" in v.message
               for v in proof.violations)


def test_a_group_level_is_shared_by_its_members_only(compiled: Compiled) -> None:
    members = [Subject(f"m{i}", f"build{i}", label(DEFAULT_TYPE, f"s0:c{i},c1000"),
                       image_label=IMAGE + f"s0:c{i},c1000") for i in (3, 7)]
    outsider = Subject("o", "web", label("svirt_nonet_t", "s0:c3,c7"), network=False, image_label=IMAGE + "s0:c3,c7")
    share = Object("group:build", "group build", "/srv/build.img", IMAGE + "s0:c1000", ResourceClass.SHARED,
                   members_only=True)
    judge = compiled.judge
    proof = prove_isolation([*members, outsider], [share], decide_with(judge), planes_of(compiled.root))
    assert proof.ok, [v.message for v in proof.violations]
    # Members: read and write the group's level; not each other's pairs. The outsider (whose pair holds
    # both members' other categories) reaches none of it: the constraint.
    assert judge.decide(members[0].label, share.label, "file", ["read", "write", "open"]).allowed
    assert judge.decide(outsider.label, share.label, "file", ["read"]).verdict is Verdict.CONSTRAINT


def test_a_module_granting_nonet_the_tap_fails_the_neverallow(compiled: Compiled, tmp_path: Path) -> None:
    store = store_with_svirtd(tmp_path / "root", tmp_path / "build")
    broken = build_module(REPO / "tests" / "fixtures" / "policy", tmp_path / "broken", "svirtd_nonet_broken")
    result = store.install(broken)
    assert result.returncode != 0
    assert "neverallow check failed" in result.stderr and "svirt_nonet_t" in result.stderr


def test_nonet_profile_puts_its_type_in_the_label_and_the_definition(bus: PrivateBus, guests: GuestFactory,
                                                                      svirtd: StartSvirtd, compiled: Compiled) -> None:
    g = guests.new()
    svirtd(policy_file=str(compiled.judge.policy_file), write_seclabels="always")
    report = run(call(bus, "Isolate", "ss", g.uuid, "nonet"))
    assert report["profile"] == "nonet" and ":svirt_nonet_t:" in report["label"]
    assert report["label"].endswith(report["level"])
    wait_until(lambda: f"<label>{report['label']}</label>" in guests.virsh("dumpxml", "--inactive", g.name).stdout,
               what="the nonet label in the definition")
    result = run(call(bus, "Verify"))
    assert result["ok"], result["violations"]
    # Back to default: svirt_t again, same pair.
    again = run(call(bus, "Isolate", "ss", g.uuid, "default"))
    assert ":svirt_t:" in again["label"] and again["level"] == report["level"]


def test_group_members_get_the_group_category_and_share_its_disk(bus: PrivateBus, guests: GuestFactory,
                                                                svirtd: StartSvirtd, compiled: Compiled) -> None:
    d = guests.image_dir
    group_disk = make_disk(d / "group.img")
    per_device = ("<seclabel model='selinux' relabel='yes'><label>system_u:object_r:svirt_image_t:s0:c1000</label>"
                  "</seclabel>")
    names = [f"{guests.prefix}-g1", f"{guests.prefix}-g2"]

    def shared_disk_xml(name: str) -> str:
        return (f"<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='{group_disk}'>"
                f"{per_device}</source><target dev='vdb' bus='virtio'/><shareable/></disk>")
    members = [guests.new(name=n, disk_specs=[Disk(make_disk(d / f"{n}.img"), "vda")], extra_devices=shared_disk_xml(n))
               for n in names]
    outsider = guests.new()
    svirtd(policy_file=str(compiled.judge.policy_file), groups={"build": {"category": "c1000", "members": names}})
    def level_of(uuid: str) -> str:
        return str(wait_until(lambda: run(call(bus, "Query", "s", uuid))["level"], what=f"{uuid} isolated"))
    levels = {g.name: level_of(g.uuid) for g in (*members, outsider)}
    for g in members:
        assert "c1000" in levels[g.name].split(":")[1].split(","), levels
    assert levels[names[0]] != levels[names[1]]
    assert "c1000" not in levels[outsider.name]
    wait_until(lambda: os.getxattr(group_disk, "security.selinux").rstrip(b"\0").decode() == IMAGE + "s0:c1000",
               what="the group disk at the group's level")
    result = run(call(bus, "Verify"))
    assert result["ok"], result["violations"]
    judge = compiled.judge
    for g in members:
        assert judge.decide(run(call(bus, "Query", "s", g.uuid))["label"], IMAGE + "s0:c1000", "file",
                            ["read", "write"]).allowed
    denied = judge.decide(run(call(bus, "Query", "s", outsider.uuid))["label"], IMAGE + "s0:c1000", "file", ["read"])
    assert denied.verdict is Verdict.CONSTRAINT


def test_a_non_member_may_not_name_a_group_level(bus: PrivateBus, guests: GuestFactory, svirtd: StartSvirtd) -> None:
    d = guests.image_dir
    disk = make_disk(d / "grab.img")
    before = selinux_xattr(disk)
    grab = (f"<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='{disk}'>"
            "<seclabel model='selinux' relabel='yes'><label>system_u:object_r:svirt_image_t:s0:c1000</label></seclabel>"
            "</source><target dev='vdb' bus='virtio'/><shareable/></disk>")
    g = guests.new(extra_devices=grab)
    proc = svirtd(groups={"build": {"category": "c1000", "members": [f"{guests.prefix}-other"]}})
    wait_until(lambda: "whose categories are not this guest's" in proc.log_text(), what="the refusal")
    assert selinux_xattr(disk) == before
    assert g.name in proc.log_text()
