"""Containment profiles (seed 3.5, 4.7): named, data-only descriptions of how a guest is confined.

The MCS pair isolates guests from each other; a profile adds coarse containment on top, in two ways:

- a process type (seed 4.7: "Type is used to enforce general security behavior"): the kernel enforces
  it on the guest's qemu whatever the guest does. svirt_nonet_t (policy/svirtd.te) may not open
  /dev/net/tun or /dev/vhost-net nor create IP sockets: a subverted qemu cannot reach the network.
- a libvirt nwfilter, for what MAC cannot see: SELinux labels qemu's file descriptors, not the guest's
  packets, so "no outbound SMTP" is a packet filter (nosmtp). svirtd defines its filters itself and
  attaches them to each interface of the guest's persistent definition (libvirt instantiates them when
  the guest starts); a guest with a tap fd can still send anything the filter lets through.

The image type stays the policy's (svirt_image_t) for every profile: libvirt derives a static label's
image label from virtual_image_context, and isolation between guests is the pair's job.
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
    # The qemu process type; None: the policy's own (virtual_domain_context: svirt_t).
    process_type: str | None = None
    # May the process type use the network (tun/tap, vhost-net, IP sockets)? What Verify expects.
    network: bool = True


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
                                          "definition with one is refused, and so is its start. Its qemu runs as "
                                          "svirt_nonet_t: the kernel denies it /dev/net/tun, /dev/vhost-net and "
                                          "IP sockets",
                forbid_interfaces=True, process_type="svirt_nonet_t", network=False),
    )
}


# Process types of profiles, beyond the policy's own: a label of one of these is a guest's.
PROFILE_PROCESS_TYPES: frozenset[str] = frozenset(p.process_type for p in PROFILES.values() if p.process_type)


def resolve_profile(name: str) -> Profile:
    """The named profile ('' means default); InvalidArgument naming the known ones otherwise."""
    profile = PROFILES.get(name or "default")
    if profile is None:
        raise InvalidArgument(f"unknown profile {name!r}; known profiles: {', '.join(sorted(PROFILES))}")
    return profile
