"""The limits on a domain definition svirtd parses, and the one bounded parser that applies them (pure).

Domain XML reaches svirtd from libvirt, from the libvirt hook (PrepareStart, HookEvent) and, through
them, from whoever wrote the definition: it is untrusted input. libvirt never emits a DOCTYPE or an
entity declaration, so any is refused outright (no "billion laughs", no external entity, whatever the
expat version would do with them). Size, nesting depth and the number of devices are checked while a
first expat pass runs (no tree is built), so a hostile document is refused after reading at most
MAX_XML_BYTES, before ElementTree builds anything of it.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import NoReturn
from xml.parsers import expat

from .errors import InvalidArgument

# The largest definition accepted: MAX_DEVICES disks with long paths fit.
MAX_XML_BYTES = 4 * 1024 * 1024
# Devices (children of <devices>) per guest: a PCI topology of qemu runs out far earlier.
MAX_DEVICES = 4096
# Element nesting: libxml2's own default limit, so whatever libvirt can parse, svirtd can (a disk's
# backing chain nests two levels per image).
MAX_DEPTH = 256


class _Refused(Exception):
    """Raised from an expat handler to stop the parse at once."""


def check_size(text: str, what: str = "domain XML") -> None:
    if len(text) > MAX_XML_BYTES or len(text.encode(errors="surrogatepass")) > MAX_XML_BYTES:
        raise InvalidArgument(f"{what} is larger than {MAX_XML_BYTES} bytes: refused")


def parse(text: str, what: str = "domain XML") -> ET.Element:
    """The document's root element. InvalidArgument for anything over a limit, with a DTD, or not XML."""
    check_size(text, what)
    _scan(text, what)
    try:
        return ET.fromstring(text)  # noqa: S314 - scanned above: no DTD, no entity, within the limits
    except ET.ParseError as exc:
        raise InvalidArgument(f"{what} does not parse: {exc}") from None


def _scan(text: str, what: str) -> None:
    parser = expat.ParserCreate()
    stack: list[str] = []
    devices = 0

    def refuse(why: str) -> NoReturn:
        raise _Refused(why)

    def start(tag: str, _attrs: dict[str, str]) -> None:
        nonlocal devices
        if len(stack) >= MAX_DEPTH:
            refuse(f"nested deeper than {MAX_DEPTH} elements")
        if len(stack) == 2 and stack[1] == "devices":
            devices += 1
            if devices > MAX_DEVICES:
                refuse(f"more than {MAX_DEVICES} devices")
        stack.append(tag)

    def end(_tag: str) -> None:
        stack.pop()

    def doctype(*_args: object) -> None:
        refuse("a DOCTYPE (libvirt never writes one; entity declarations are refused)")

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.StartDoctypeDeclHandler = doctype
    parser.EntityDeclHandler = doctype
    try:
        parser.Parse(text, True)
    except _Refused as exc:
        raise InvalidArgument(f"{what} refused: {exc}") from None
    except (expat.ExpatError, UnicodeError, ValueError) as exc:
        raise InvalidArgument(f"{what} does not parse: {exc}") from None
