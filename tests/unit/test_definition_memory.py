"""What a parsed definition keeps (issue 19): svirtd holds one DomainSpec per guest for Query, so 10,000
guests hold 10,000. tracemalloc counts the bytes Python allocated for them: no timing involved."""

from __future__ import annotations

import gc
import tracemalloc
import uuid as uuidlib

from svirtd.models import ResourceClass
from svirtd.resources import DomainSpec, parse_domain

GUESTS = 2000
BUDGET = 1000  # bytes per DomainSpec of a definition without disks, as libvirt writes a minimal one back
# (its default controllers and inputs): ~11 KB when every device had its own Resources, 1.45 KB when each
# DomainSpec was validated again (its own copies of its tuples and its own set of field names), ~0.73 KB.
DEFINITION = """<domain type='qemu'><name>g-{n}</name><uuid>{uuid}</uuid><memory unit='KiB'>65536</memory>
<os><type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type><boot dev='hd'/></os>
<devices><emulator>/usr/bin/qemu-system-x86_64</emulator>
<controller type='usb' index='0' model='piix3-uhci'/><controller type='pci' index='0' model='pci-root'/>
<input type='mouse' bus='ps2'/><input type='keyboard' bus='ps2'/><audio id='1' type='none'/>
<video><model type='none'/></video><memballoon model='none'/></devices></domain>"""


def parsed(count: int) -> list[DomainSpec]:
    return [parse_domain(DEFINITION.format(n=n, uuid=uuidlib.uuid4())) for n in range(count)]


def test_a_kept_definition_shares_its_emulated_devices_with_every_other() -> None:
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        specs = parsed(GUESTS)
        gc.collect()
        per_guest = (tracemalloc.get_traced_memory()[0] - before) / GUESTS
    finally:
        tracemalloc.stop()
    print(f"{per_guest:.0f} bytes per parsed definition")
    assert per_guest < BUDGET, f"{per_guest:.0f} bytes per parsed definition"
    assert {len(s.resources) for s in specs} == {7}
    assert all(r.rclass is ResourceClass.UNHANDLED for r in specs[0].resources)


def test_shared_devices_are_equal_to_what_a_parse_makes_and_files_stay_their_own() -> None:
    a, b = parsed(2)
    assert a.resources == b.resources and all(x is y for x, y in zip(a.resources, b.resources, strict=True))
    disk = "<disk type='file' device='disk'><source file='/var/lib/libvirt/images/{n}.img'/><target dev='vda'/></disk>"
    one, two = (parse_domain(DEFINITION.format(n=n, uuid=uuidlib.uuid4()).replace(
        "<devices>", "<devices>" + disk.format(n=n))) for n in ("x", "y"))
    files = [[r for r in spec.resources if r.rclass is not ResourceClass.UNHANDLED] for spec in (one, two)]
    assert [r.path for r in files[0]] == ["/var/lib/libvirt/images/x.img"]
    assert [r.path for r in files[1]] == ["/var/lib/libvirt/images/y.img"]


def test_a_kept_definition_is_what_a_validated_one_is_and_copies_as_one() -> None:
    [spec] = parsed(1)
    assert spec == DomainSpec(**dict(spec)) and spec.model_fields_set == set(DomainSpec.model_fields)
    renamed = spec.model_copy(update={"name": "renamed"})
    assert renamed.name == "renamed" and spec.name != "renamed" and renamed.uuid == spec.uuid
    assert spec.model_copy(deep=True) == spec
