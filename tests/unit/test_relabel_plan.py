"""Relabel planning is pure: classes -> target labels, hostile paths refused before any I/O."""

from __future__ import annotations

import pytest

from svirtd.errors import UnsafePath
from svirtd.models import Level
from svirtd.policy import LabelSpec
from svirtd.relabel import plan_relabel
from svirtd.resources import parse_domain

SPEC = LabelSpec.from_context_files("system_u:system_r:svirt_t:s0\n",
                                    "system_u:object_r:svirt_image_t:s0\nsystem_u:object_r:virt_content_t:s0\n")
UUID = "0a6f7c1e-2b3d-4e5f-8a9b-0c1d2e3f4a5b"
LEVEL = Level(low=4, high=9)


def domain(devices: str) -> str:
    return f"<domain type='kvm'><name>g</name><uuid>{UUID}</uuid><devices>{devices}</devices></domain>"


def test_targets_by_class_sorted_by_path() -> None:
    plan = plan_relabel(parse_domain(domain("""
        <disk type='file'><source file='/img/z.img'/><target dev='vda'/></disk>
        <disk type='file'><source file='/img/a.img'/><target dev='vdb'/><shareable/></disk>
        <disk type='file' device='cdrom'><source file='/img/m.iso'/><target dev='sda'/></disk>
        <filesystem type='mount'><source dir='/srv/share/g'/><target dir='s'/></filesystem>
        <hostdev type='usb'><source><address bus='1' device='2'/></source></hostdev>""")), LEVEL, SPEC)
    assert [(p.resource.path, p.target) for p in plan.items] == [
        ("/img/a.img", "system_u:object_r:svirt_image_t:s0"),
        ("/img/m.iso", "system_u:object_r:virt_content_t:s0"),
        ("/img/z.img", "system_u:object_r:svirt_image_t:s0:c4,c9"),
        ("/srv/share/g", "system_u:object_r:svirt_image_t:s0:c4,c9"),
    ]
    assert [r.device for r in plan.unhandled] == ["hostdev usb"]


@pytest.mark.parametrize("devices", [
    "<disk type='file'><source file='/etc/shadow'/><target dev='vda'/></disk>",
    "<disk type='file'><source file='/img/../etc/passwd'/><target dev='vda'/></disk>",
    "<filesystem type='mount'><source dir='/home'/><target dir='h'/></filesystem>",
    "<disk type='file'><source file='/var/lib/svirtd/state.db'/><target dev='vda'/></disk>",
])
def test_hostile_paths_refused_in_planning(devices: str) -> None:
    with pytest.raises(UnsafePath):
        plan_relabel(parse_domain(domain(devices)), LEVEL, SPEC, denied_trees=["/var/lib/svirtd"])
