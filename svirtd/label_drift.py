"""What to do when a running guest's resource no longer carries the label svirtd recorded (pure).

Labels drift while guests run: an admin's `restorecon -R /var/lib/libvirt/images` resets the type of
every file it visits (keeping user, role and level unless -F), `chcon` by hand, a backup tool that
restores xattrs. The guest's qemu then loses its own disk (SELinux re-checks an open file's label on
each read and write), while other guests stay shut out: drift fails closed, but the guest breaks.

- svirtd applied the label (Applier.SVIRTD): svirtd is its only writer while the guest runs, so any
  difference is drift and is repaired (a re-converge, which keeps the recorded original).
- libvirt's driver applied it (Applier.LIBVIRT): libvirt also writes it (hotplug, unplug, block jobs
  restore the label they remembered), so only a difference libvirt never makes is repaired: the
  type changed while the level is still the guest's own categories (what a non-forced restorecon
  leaves). Anything else is reported, not fought over.
"""

from __future__ import annotations

import enum

from .models import Applier, Context


class Drift(enum.Enum):
    NONE = "none"  # the label is what svirtd recorded
    REPAIR = "repair"  # drift svirtd puts right
    REPORT = "report"  # drift svirtd only reports (libvirt may be mid-operation)


def classify(expected: str, current: str | None, applier: Applier) -> Drift:
    """expected: the claim's recorded label ('' when nobody labels it); current: on disk now."""
    if not expected or current == expected:
        return Drift.NONE
    if applier is Applier.SVIRTD:
        return Drift.REPAIR
    if applier is not Applier.LIBVIRT or current is None:
        return Drift.REPORT
    try:
        want, have = Context.parse(expected), Context.parse(current)
    except ValueError:
        return Drift.REPORT
    if want.mcs.categories and have.mcs == want.mcs and have.type != want.type:
        return Drift.REPAIR
    return Drift.REPORT
