"""Which label each resource of a guest gets, and who applies it (pure: no I/O, no libvirt).

svirtd is the single authority for a guest's level (its pair, bound to its UUID). Who writes the
label on each resource depends on the host and the definition:

- where libvirt's SELinux driver is active and the guest's seclabel lets it relabel (svirtd writes
  `<seclabel type='static' model='selinux' relabel='yes'>` with the guest's label), libvirt labels
  every resource its driver knows (disks and the backing chains it probes, hotplugged devices,
  snapshot overlays, block-job targets, host device nodes, chardevs, NVRAM...) at exactly the moment
  qemu needs it, and restores it after; svirtd labels only what libvirt leaves out: directory trees
  shared with the guest (virtiofs/9p);
- elsewhere (no SELinux driver in libvirt, or an old `relabel='no'` definition) svirtd labels every
  file and tree itself, never host device nodes.

A per-device `<seclabel relabel='no'>` keeps everyone's hands off that resource; a per-device
`<label>` replaces the class label, but never with another guest's pair. A member of a guest group
may name its group's level (s0:cG): that is how a disk is shared with the group only (libvirt honours
the per-device label too; a plain `<shareable/>` disk stays s0, open to every guest).

A backing layer is read-only content (readable by every guest: base images are shared), except one
the guest already holds privately: the old top of an external snapshot keeps the guest's pair, as
libvirt leaves it (seen on the enforcing VM). Read-only content would let every other guest read the
data the guest wrote into it; MCS has no "read-only for this pair only" label.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .errors import InvalidArgument
from .models import Applier, Context, Level, Resource, ResourceClass
from .policy import LabelSpec
from .resources import DomainSpec


@dataclass(frozen=True)
class LabelDecision:
    resource: Resource
    target: str  # the label it carries while the guest is isolated ('' when nobody labels it)
    applier: Applier
    reason: str = ""

    @property
    def path(self) -> str:
        return self.resource.path


NORELABEL_REASON = "the definition says <seclabel relabel='no'> for it: its label is left as it is"
LIBVIRT_REASON = "labeled by libvirt's SELinux driver with the guest's label while the guest runs"
NO_DRIVER_REASON = "this host's libvirt has no SELinux driver, so nothing labels it here"


def decide_labels(domain: DomainSpec, level: Level, spec: LabelSpec, libvirt_relabels: bool,
                  own_private: frozenset[str] = frozenset(), group: int | None = None) -> tuple[LabelDecision, ...]:
    """A decision for every resource of the domain, in the domain's order. own_private: paths the
    guest holds as private resources now (its claims); group: its group's category, if any."""
    return tuple(decide_label(_kept_private(res, own_private), level, spec, libvirt_relabels, group)
                 for res in domain.resources)


def _kept_private(res: Resource, own_private: frozenset[str]) -> Resource:
    if res.backing and res.rclass is ResourceClass.READONLY and res.path in own_private:
        return res.model_copy(update={"rclass": ResourceClass.PRIVATE})
    return res


def decide_label(res: Resource, level: Level, spec: LabelSpec, libvirt_relabels: bool,
                 group: int | None = None) -> LabelDecision:
    if res.rclass is ResourceClass.UNHANDLED:
        applier = Applier.LIBVIRT if libvirt_relabels and res.libvirt_labels else Applier.NOBODY
        return LabelDecision(res, "", applier, res.note)
    if not res.relabel:
        return LabelDecision(res, "", Applier.NOBODY, NORELABEL_REASON)
    target = target_label(res, level, spec, group)
    if libvirt_relabels and res.libvirt_labels:
        return LabelDecision(res, target, Applier.LIBVIRT, LIBVIRT_REASON)
    if res.svirtd_labels:
        return LabelDecision(res, target, Applier.SVIRTD)
    why = res.note if libvirt_relabels else f"{res.note}; {NO_DRIVER_REASON}"
    return LabelDecision(res, target, Applier.NOBODY, why)


def target_label(res: Resource, level: Level, spec: LabelSpec, group: int | None = None) -> str:
    """The class label for the guest's level, or the definition's own per-device label when it names
    one that does not reach into another guest (s0, this guest's own pair, or its group's s0:cG)."""
    if res.label is None:
        target = spec.label_for(res.rclass, level)
        assert target is not None  # UNHANDLED never gets here
        return str(target)
    try:
        own = Context.parse(res.label)
    except ValueError as exc:
        raise InvalidArgument(f"{res.device} ({res.path}): its <seclabel><label> is not a context: {exc}") from None
    mcs = own.mcs
    shared_with_group = group is not None and mcs.categories == frozenset({group}) and group in level.pair
    if mcs.categories and mcs.categories != level.as_mcs().categories and not shared_with_group:
        raise InvalidArgument(f"{res.device} ({res.path}) asks for {res.label}, whose categories are not this "
                              f"guest's ({level}): that would hand the file to another guest. Use s0 (shared) or "
                              "drop the per-device label")
    return str(own)


def by_applier(decisions: Iterable[LabelDecision], applier: Applier) -> list[LabelDecision]:
    return [d for d in decisions if d.applier is applier]
