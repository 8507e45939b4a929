"""Relabel planning is pure: classes -> target labels, hostile paths refused before any I/O."""

from __future__ import annotations

import pytest

from svirtd.errors import UnsafePath
from svirtd.label_plan import decide_labels
from svirtd.models import Level
from svirtd.policy import LabelSpec
from svirtd.relabel import RelabelPlan, plan_relabel
from svirtd.resources import parse_domain

SPEC = LabelSpec.from_context_files("system_u:system_r:svirt_t:s0\n",
                                    "system_u:object_r:svirt_image_t:s0\nsystem_u:object_r:virt_content_t:s0\n")
UUID = "0a6f7c1e-2b3d-4e5f-8a9b-0c1d2e3f4a5b"
LEVEL = Level(low=4, high=9)


def domain(devices: str) -> str:
    return f"<domain type='kvm'><name>g</name><uuid>{UUID}</uuid><devices>{devices}</devices></domain>"


def plan(xml: str, denied_trees: tuple[str, ...] = (), libvirt_relabels: bool = False) -> RelabelPlan:
    return plan_relabel(decide_labels(parse_domain(xml), LEVEL, SPEC, libvirt_relabels), UUID, LEVEL, denied_trees)


def test_targets_by_class_sorted_by_path() -> None:
    planned = plan(domain("""
        <disk type='file'><source file='/img/z.img'/><target dev='vda'/></disk>
        <disk type='file'><source file='/img/a.img'/><target dev='vdb'/><shareable/></disk>
        <disk type='file' device='cdrom'><source file='/img/m.iso'/><target dev='sda'/></disk>
        <filesystem type='mount'><source dir='/srv/share/g'/><target dir='s'/></filesystem>
        <hostdev type='usb'><source><address bus='1' device='2'/></source></hostdev>"""))
    assert [(p.resource.path, p.target) for p in planned.items] == [
        ("/img/a.img", "system_u:object_r:svirt_image_t:s0"),
        ("/img/m.iso", "system_u:object_r:virt_content_t:s0"),
        ("/img/z.img", "system_u:object_r:svirt_image_t:s0:c4,c9"),
        ("/srv/share/g", "system_u:object_r:svirt_image_t:s0:c4,c9"),
    ]
    assert [d.resource.device for d in planned.unhandled] == ["hostdev usb"]


@pytest.mark.parametrize("devices", [
    "<disk type='file'><source file='/etc/shadow'/><target dev='vda'/></disk>",
    "<disk type='file'><source file='/img/../etc/passwd'/><target dev='vda'/></disk>",
    "<filesystem type='mount'><source dir='/home'/><target dir='h'/></filesystem>",
    "<disk type='file'><source file='/var/lib/svirtd/state.db'/><target dev='vda'/></disk>",
])
def test_hostile_paths_refused_in_planning(devices: str) -> None:
    with pytest.raises(UnsafePath):
        plan(domain(devices), denied_trees=("/var/lib/svirtd",))


def test_an_optional_resource_svirtd_may_not_touch_is_reported_not_fatal() -> None:
    """A serial log under /var/log, a socket under /etc: reported on that resource; the guest is still
    isolated (issue 13, item 6: such a layout used to leave the whole guest without a pair)."""
    planned = plan(domain("""
        <disk type='file'><source file='/img/a.img'/><target dev='vda'/></disk>
        <serial type='file'><source path='/etc/g.serial'/></serial>"""))
    assert [p.resource.path for p in planned.items] == ["/img/a.img"]
    assert [(r.path, "system tree /etc" in why) for r, why in planned.refused] == [("/etc/g.serial", True)]


def test_what_libvirt_labels_is_planned_as_a_claim_only() -> None:
    planned = plan(domain("""
        <disk type='file'><source file='/img/a.img'/><target dev='vda'/></disk>
        <filesystem type='mount'><source dir='/srv/share/g'/><target dir='s'/></filesystem>"""),
        libvirt_relabels=True)
    assert [(p.resource.path, p.labels) for p in planned.items] == [("/img/a.img", False), ("/srv/share/g", True)]
    # ... and still refused by svirtd when it names what nobody may relabel: libvirt would, on svirtd's word.
    with pytest.raises(UnsafePath):
        plan(domain("<disk type='file'><source file='/etc/shadow'/><target dev='vda'/></disk>"), libvirt_relabels=True)
