"""label_drift.classify: which label drift on a running guest svirtd repairs, and which it only reports."""

from __future__ import annotations

import pytest

from svirtd.label_drift import Drift, classify
from svirtd.models import Applier

MINE = "system_u:object_r:svirt_image_t:s0:c1,c2"
RESTORECON = "system_u:object_r:virt_image_t:s0:c1,c2"  # restorecon without -F: type reset, level kept
FORCED = "system_u:object_r:virt_image_t:s0"  # restorecon -F, or libvirt restoring what it remembered
CONTENT = "system_u:object_r:virt_content_t:s0"


@pytest.mark.parametrize(("expected", "current", "applier", "want"), [
    (MINE, MINE, Applier.SVIRTD, Drift.NONE),
    (MINE, MINE, Applier.LIBVIRT, Drift.NONE),
    ("", FORCED, Applier.NOBODY, Drift.NONE),
    # svirtd's own labels: it is their only writer while the guest runs.
    (MINE, RESTORECON, Applier.SVIRTD, Drift.REPAIR),
    (MINE, FORCED, Applier.SVIRTD, Drift.REPAIR),
    (MINE, None, Applier.SVIRTD, Drift.REPAIR),
    (CONTENT, FORCED, Applier.SVIRTD, Drift.REPAIR),
    # libvirt's: only the type reset libvirt never makes.
    (MINE, RESTORECON, Applier.LIBVIRT, Drift.REPAIR),
    (MINE, FORCED, Applier.LIBVIRT, Drift.REPORT),
    (MINE, None, Applier.LIBVIRT, Drift.REPORT),
    (MINE, "system_u:object_r:svirt_image_t:s0:c3,c4", Applier.LIBVIRT, Drift.REPORT),
    (CONTENT, FORCED, Applier.LIBVIRT, Drift.REPORT),  # s0 both: an unplug's restore looks the same
    (MINE, "garbage", Applier.LIBVIRT, Drift.REPORT),
])
def test_classify(expected: str, current: str | None, applier: Applier, want: Drift) -> None:
    assert classify(expected, current, applier) is want
