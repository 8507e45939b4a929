"""Levels a guest already claims, from every source, in priority order (pure)."""

from __future__ import annotations

from svirtd.level_claims import LevelSource, level_claims, pair_of
from svirtd.models import Level
from svirtd.policy import LabelSpec
from svirtd.resources import SVIRT_XMLNS, parse_domain

SPEC = LabelSpec.from_context_files("system_u:system_r:svirt_t:s0\n",
                                    "system_u:object_r:svirt_image_t:s0\nsystem_u:object_r:virt_content_t:s0\n")
UUID = "0a6f7c1e-2b3d-4e5f-8a9b-0c1d2e3f4a5b"


def domain(extra: str = "") -> str:
    return f"<domain type='qemu'><name>g</name><uuid>{UUID}</uuid>{extra}<devices/></domain>"


def test_priority_running_static_metadata_resource() -> None:
    """What runs comes first (svirtd never relabels files away from under a running qemu), then what
    the definition says, then what its files carry."""
    xml = domain(f"""<metadata><s:isolation xmlns:s='{SVIRT_XMLNS}' level='s0:c3,c4'/></metadata>
      <seclabel type='static' model='selinux' relabel='no'>
        <label>system_u:system_r:svirt_t:s0:c1,c2</label></seclabel>""")
    claims = level_claims(parse_domain(xml), SPEC, running_labels=["system_u:system_r:svirt_t:s0:c5,c6"],
                          resource_labels=["system_u:object_r:svirt_image_t:s0:c7,c8"])
    assert [(str(c.level), c.source) for c in claims] == [
        ("s0:c5,c6", LevelSource.RUNNING), ("s0:c1,c2", LevelSource.STATIC),
        ("s0:c3,c4", LevelSource.METADATA), ("s0:c7,c8", LevelSource.RESOURCE)]


def test_foreign_types_ranges_and_duplicates_do_not_count() -> None:
    claims = level_claims(parse_domain(domain()), SPEC,
                          running_labels=["+64055:+64055", "system_u:system_r:unconfined_t:s0:c1,c2"],
                          resource_labels=["system_u:object_r:svirt_image_t:s0",  # shared: no pair
                                           "system_u:object_r:svirt_image_t:s0:c0.c1023",  # a range
                                           "system_u:object_r:user_home_t:s0:c3,c4",  # not an image type
                                           "system_u:object_r:svirt_image_t:s0:c9,c10",
                                           "system_u:object_r:svirt_image_t:s0:c9,c10"])
    assert [str(c.level) for c in claims] == ["s0:c9,c10"]


def test_dynamic_seclabel_and_bad_metadata_are_ignored() -> None:
    xml = domain(f"""<metadata><s:isolation xmlns:s='{SVIRT_XMLNS}' level='s0:c9'/></metadata>
      <seclabel type='dynamic' model='selinux'/>""")
    assert level_claims(parse_domain(xml), SPEC) == []


def test_pair_of() -> None:
    assert pair_of("system_u:system_r:svirt_t:s0:c2,c1") == Level(low=1, high=2)
    assert pair_of("system_u:system_r:svirt_t:s0") is None
    assert pair_of("garbage") is None
