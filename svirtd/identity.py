"""What svirtd writes into a guest's persistent definition (pure): identity, process label, filters.

- `<metadata><svirt:isolation uuid= level= profile=/>`: the binding travels with the guest (migration,
  backups, copied XML) and is claimed back when the guest returns (seed 4.4).
- `<seclabel type='static' model='selinux' relabel='yes'>`: where libvirt's SELinux driver runs, libvirt
  then execs qemu in exactly the label svirtd handed out and labels every file its driver knows with
  that label's pair, at start and at hotplug, snapshot and block-job time (label_plan.py says who
  labels what).
- `<filterref filter='svirtd-...'/>` on each interface, for profiles that filter traffic.

rewrite_definition returns None when the definition already says all that, so a redefinition never
triggers another.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from . import xml_limits
from .models import Level
from .resources import SVIRT_XMLNS

ET.register_namespace("svirt", SVIRT_XMLNS)


def rewrite_definition(xml: str, uuid: str, level: Level, profile: str, seclabel: str | None,
                       nwfilter: str | None) -> str | None:
    """The definition with svirtd's identity, label and filters; None when nothing needs to change."""
    root = xml_limits.parse(xml)
    changed = _set_metadata(root, uuid, level, profile)
    if seclabel is not None:
        changed |= _set_seclabel(root, seclabel)
    if nwfilter is not None:
        changed |= _set_filters(root, nwfilter)
    return ET.tostring(root, encoding="unicode") if changed else None


def _set_metadata(root: ET.Element, uuid: str, level: Level, profile: str) -> bool:
    metadata = root.find("metadata")
    if metadata is None:
        metadata = ET.SubElement(root, "metadata")
    tag = f"{{{SVIRT_XMLNS}}}isolation"
    want = {"uuid": uuid, "level": str(level), "profile": profile}
    current = metadata.find(tag)
    if current is not None and dict(current.attrib) == want:
        return False
    if current is not None:
        metadata.remove(current)
    ET.SubElement(metadata, tag, want)
    return True


def _set_seclabel(root: ET.Element, label: str) -> bool:
    mine = [el for el in root.findall("seclabel") if el.get("model", "selinux") == "selinux"]
    if (len(mine) == 1 and mine[0].get("type") == "static" and mine[0].get("relabel") == "yes"
            and (mine[0].findtext("label") or "").strip() == label and mine[0].find("imagelabel") is None):
        return False
    for el in mine:
        root.remove(el)
    sec = ET.SubElement(root, "seclabel", {"type": "static", "model": "selinux", "relabel": "yes"})
    ET.SubElement(sec, "label").text = label
    return True


def strip_identity(xml: str, level: Level) -> str | None:
    """The definition without svirtd's binding and without a static seclabel at `level` (a released
    guest must not keep running in, or hand a copy of its XML, a pair svirtd may give to another
    guest); None when it carries neither."""
    root = xml_limits.parse(xml)
    changed = False
    metadata = root.find("metadata")
    if metadata is not None:
        for el in metadata.findall(f"{{{SVIRT_XMLNS}}}isolation"):
            metadata.remove(el)
            changed = True
    for el in root.findall("seclabel"):
        text = (el.findtext("label") or "").strip()
        if el.get("model", "selinux") == "selinux" and el.get("type") == "static" and text.endswith(f":{level}"):
            root.remove(el)
            changed = True
    return ET.tostring(root, encoding="unicode") if changed else None


def filter_chain_name(base: str, existing: str) -> str:
    """A filter running the profile's filter and the one the interface already had."""
    return f"{base}-and-{existing}"


def _set_filters(root: ET.Element, nwfilter: str) -> bool:
    changed = False
    for iface in root.findall("devices/interface"):
        ref = iface.find("filterref")
        if ref is None:
            ET.SubElement(iface, "filterref", {"filter": nwfilter})
            changed = True
        elif ref.get("filter") != nwfilter and not (ref.get("filter") or "").startswith(nwfilter + "-and-"):
            ref.set("filter", filter_chain_name(nwfilter, ref.get("filter", "")))
            changed = True
    return changed


def chained_filters(xml: str, nwfilter: str) -> list[str]:
    """The filters an interface of this definition chains with the profile's (to be defined first)."""
    root = xml_limits.parse(xml)
    names = {ref.get("filter", "") for ref in root.findall("devices/interface/filterref")}
    return sorted(n for n in names if n.startswith(nwfilter + "-and-"))


def chain_filter_xml(name: str) -> str:
    base, _, existing = name.partition("-and-")
    return (f"<filter name='{name}' chain='root'><filterref filter='{base}'/><filterref filter='{existing}'/>"
            "</filter>")


def without_selinux_labels(xml: str) -> str:
    """The definition without any domain-level <seclabel model='selinux'> (static or dynamic)."""
    root = xml_limits.parse(xml)
    for el in root.findall("seclabel"):
        if el.get("model", "selinux") == "selinux":
            root.remove(el)
    return ET.tostring(root, encoding="unicode")
