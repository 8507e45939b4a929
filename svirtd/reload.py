"""What a reload (SIGHUP, `systemctl reload svirtd`) may change without a restart (pure).

Options that only steer future decisions are applied at once. Options that name what svirtd is
built on (its database, bus, libvirt connection, category space, audit source, policy file, where the
hook and mcstrans read from) keep their running value: changing them under live guests would orphan
labels or connections. A reload that changes one of those says so and that a restart applies it.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import Config

RELOADABLE: tuple[str, ...] = (
    "log_level",
    "default_confined",
    "require_confined",
    "auto_confine_names",
    "refuse_unlabelable",
    "restore_shared",
    "denied_paths",
    "io_timeout_seconds",
    "rescan_seconds",
    "reconnect_max_seconds",
    "auto_verify_max_guests",
)
# Changing these changes which guests automatic confinement covers: libvirt's guests are looked at again.
RECONFINE: frozenset[str] = frozenset({"default_confined", "auto_confine_names"})


@dataclass(frozen=True)
class ReloadPlan:
    config: Config  # what svirtd runs with after the reload
    applied: tuple[str, ...]  # options changed now
    need_restart: tuple[str, ...]  # options changed in the file, kept until the next restart

    @property
    def reconfine(self) -> bool:
        return bool(RECONFINE.intersection(self.applied))

    def describe(self) -> str:
        parts = [f"applied: {', '.join(self.applied)}" if self.applied else "nothing changed"]
        if self.need_restart:
            parts.append(f"{', '.join(self.need_restart)} changed but take effect only after "
                         "`systemctl restart svirtd`")
        return "; ".join(parts)


def plan_reload(running: Config, wanted: Config) -> ReloadPlan:
    changed = [name for name in Config.model_fields if getattr(running, name) != getattr(wanted, name)]
    applied = tuple(name for name in changed if name in RELOADABLE)
    need_restart = tuple(name for name in changed if name not in RELOADABLE)
    config = running.model_copy(update={name: getattr(wanted, name) for name in applied})
    return ReloadPlan(config, applied, need_restart)
