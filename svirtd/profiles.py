"""Containment profiles: named, data-only descriptions of how a guest is confined (seed 3.5)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from .errors import InvalidArgument


class Profile(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    description: str


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile(name="default", description="MCS isolation from every other guest; network as defined"),
    )
}


def resolve_profile(name: str) -> Profile:
    """The named profile ('' means default); InvalidArgument naming the known ones otherwise."""
    profile = PROFILES.get(name or "default")
    if profile is None:
        raise InvalidArgument(f"unknown profile {name!r}; known profiles: {', '.join(sorted(PROFILES))}")
    return profile
