"""What svirtd writes into a definition, and that a second pass writes nothing (pure)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from svirtd.identity import chain_filter_xml, chained_filters, rewrite_definition, strip_identity
from svirtd.models import Level
from svirtd.resources import SVIRT_XMLNS, parse_domain

UUID = "0a6f7c1e-2b3d-4e5f-8a9b-0c1d2e3f4a5b"
LEVEL = Level(low=5, high=77)
LABEL = "system_u:system_r:svirt_t:s0:c5,c77"
XML = f"""<domain type='kvm'><name>web01</name><uuid>{UUID}</uuid>
  <metadata><app:x xmlns:app='https://example.org/app' keep='me'/></metadata>
  <seclabel type='dynamic' model='selinux'/>
  <seclabel type='none' model='dac'/>
  <devices>
    <interface type='network'><source network='default'/></interface>
    <interface type='network'><source network='lan'/><filterref filter='clean-traffic'>
      <parameter name='IP' value='10.0.0.2'/></filterref></interface>
  </devices></domain>"""


def test_identity_label_and_filters_written_once() -> None:
    out = rewrite_definition(XML, UUID, LEVEL, "nosmtp", LABEL, "svirtd-nosmtp")
    assert out is not None
    spec = parse_domain(out)
    assert spec.svirt_metadata == {"uuid": UUID, "level": "s0:c5,c77", "profile": "nosmtp"}
    # relabel='yes': libvirt's driver labels the guest's files with this label's pair (label_plan.py).
    assert [(s.type, s.relabel, s.label) for s in spec.seclabels] == [("static", True, LABEL)]
    root = ET.fromstring(out)
    assert root.find("seclabel[@model='dac']") is not None  # other models are not ours to touch
    other_app = root.find("metadata/{https://example.org/app}x")
    assert other_app is not None and other_app.get("keep") == "me"  # nor other apps' metadata
    refs = [r.get("filter") for r in root.findall("devices/interface/filterref")]
    assert refs == ["svirtd-nosmtp", "svirtd-nosmtp-and-clean-traffic"]
    param = root.find("devices/interface/filterref/parameter")
    assert param is not None and param.get("value") == "10.0.0.2"
    assert chained_filters(out, "svirtd-nosmtp") == ["svirtd-nosmtp-and-clean-traffic"]
    chain = ET.fromstring(chain_filter_xml("svirtd-nosmtp-and-clean-traffic"))
    assert [r.get("filter") for r in chain.findall("filterref")] == ["svirtd-nosmtp", "clean-traffic"]
    # Already there: nothing to write, so the redefinition's own event changes nothing.
    assert rewrite_definition(out, UUID, LEVEL, "nosmtp", LABEL, "svirtd-nosmtp") is None


def test_without_selinux_no_seclabel_but_metadata() -> None:
    out = rewrite_definition(XML, UUID, LEVEL, "default", None, None)
    assert out is not None
    root = ET.fromstring(out)
    isolation = root.find(f"metadata/{{{SVIRT_XMLNS}}}isolation")
    assert isolation is not None and isolation.get("level") == "s0:c5,c77"
    assert root.find("seclabel[@type='dynamic']") is not None  # left as it was
    assert rewrite_definition(out, UUID, LEVEL, "default", None, None) is None
    assert rewrite_definition(out, UUID, Level(low=1, high=2), "default", None, None) is not None


def test_an_old_relabel_no_seclabel_is_rewritten_to_relabel_yes() -> None:
    old = XML.replace("<seclabel type='dynamic' model='selinux'/>",
                      f"<seclabel type='static' model='selinux' relabel='no'><label>{LABEL}</label></seclabel>")
    out = rewrite_definition(old, UUID, LEVEL, "default", LABEL, None)
    assert out is not None and [s.relabel for s in parse_domain(out).seclabels] == [True]


def test_release_strips_svirtds_binding_and_its_static_label_only() -> None:
    """Issue 13, item 3: a released guest's definition must not keep svirtd's pair (a copy of it would
    get the very same pair, or it would run in it)."""
    out = rewrite_definition(XML, UUID, LEVEL, "default", LABEL, None)
    assert out is not None
    stripped = strip_identity(out, LEVEL)
    assert stripped is not None
    spec = parse_domain(stripped)
    assert spec.svirt_metadata == {} and spec.seclabels == ()
    root = ET.fromstring(stripped)
    assert root.find("seclabel[@model='dac']") is not None
    assert root.find("metadata/{https://example.org/app}x") is not None
    assert strip_identity(stripped, LEVEL) is None  # nothing left to strip: no redefinition
    # An admin's own static label at another level is not svirtd's to remove.
    admin = XML.replace("<seclabel type='dynamic' model='selinux'/>",
                        "<seclabel type='static' model='selinux'><label>system_u:system_r:svirt_t:s0:c1,c2</label>"
                        "</seclabel>")
    assert strip_identity(admin, LEVEL) is None
