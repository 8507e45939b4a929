"""Containment profiles (seed 3.5): named, data-only descriptions of how a guest is confined.

The MCS pair isolates guests from each other; a profile adds coarse containment on top: what the
guest may do on the network. Filters are libvirt nwfilters svirtd defines itself and attaches to each
interface of the guest's persistent definition (libvirt instantiates them when the guest starts).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from .errors import InvalidArgument


class Profile(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    description: str
    nwfilter: str | None = None  # attached to every interface
    forbid_interfaces: bool = False  # the guest may have no network interface at all


# libvirt nwfilters svirtd owns, by name.
NWFILTERS: dict[str, str] = {
    "svirtd-nosmtp": """<filter name='svirtd-nosmtp' chain='root'>
  <!-- svirtd profile nosmtp: the guest can never send mail directly (no outbound TCP port 25) -->
  <rule action='drop' direction='out' priority='100'><tcp dstportstart='25' dstportend='25'/></rule>
  <rule action='drop' direction='out' priority='100'><tcp-ipv6 dstportstart='25' dstportend='25'/></rule>
</filter>""",
}

PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile(name="default", description="MCS isolation from every other guest; network as defined"),
        Profile(name="nosmtp", description="as default, and outbound TCP port 25 (SMTP) is dropped on every "
                                           "interface: a compromised guest cannot be a spam bot",
                nwfilter="svirtd-nosmtp"),
        Profile(name="nonet", description="as default, and the guest may have no network interface at all; a "
                                          "definition with one is refused, and so is its start",
                forbid_interfaces=True),
    )
}


def resolve_profile(name: str) -> Profile:
    """The named profile ('' means default); InvalidArgument naming the known ones otherwise."""
    profile = PROFILES.get(name or "default")
    if profile is None:
        raise InvalidArgument(f"unknown profile {name!r}; known profiles: {', '.join(sorted(PROFILES))}")
    return profile
