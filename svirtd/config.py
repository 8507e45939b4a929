"""svirtd.conf (TOML) -> a validated Config. Every option has a safe default."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .cluster_model import HOST_ID_RULE, is_host_id
from .errors import ConfigError
from .models import format_categories, parse_categories

DEFAULT_CONFIG_PATH = Path("/etc/svirt/svirtd.conf")


class ClusterConfig(BaseModel):
    """[cluster]: where the allocation table lives. "local": this host's SQLite only (nothing else to run).
    "etcd": the pair <-> UUID bindings live in an etcd cluster shared by every host that may run the same
    guests (shared storage, migration), so a pair means one guest on every host."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Literal["local", "etcd"] = "local"
    # etcd client URLs, e.g. ["https://10.0.0.1:2379", "https://10.0.0.2:2379", "https://10.0.0.3:2379"].
    endpoints: tuple[str, ...] = ()
    # TLS: the CA that signed the members' certificates, and this host's client certificate and key.
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    # Every key svirtd writes starts with this (several svirtd clusters may share one etcd).
    prefix: str = "/svirt/"
    # This host's name in the cluster (in each binding's list of hosts); "" = the host name.
    host_id: str = ""
    # The lease of this host's liveness key (seconds): reporting only, nothing is freed when it expires.
    lease_seconds: int = Field(default=10, ge=2, le=3600)
    # Longest wait for one etcd request (seconds) before the next endpoint is tried.
    timeout_seconds: float = Field(default=1.0, gt=0, le=60)

    @field_validator("endpoints")
    @classmethod
    def _urls(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for url in value:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
                raise ValueError(f"{url!r} is not an etcd client URL (http(s)://HOST:PORT)")
            try:
                parts.port  # noqa: B018 -- raises on a bad port
            except ValueError as exc:
                raise ValueError(f"{url!r}: {exc}") from None
        return value

    @field_validator("ca_file", "cert_file", "key_file")
    @classmethod
    def _absolute_file(cls, value: str) -> str:
        if value and not value.startswith("/"):
            raise ValueError(f"{value!r} is not an absolute path")
        return value

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not value.startswith("/") or not value.endswith("/") or len(value) < 2:
            raise ValueError(f"{value!r}: a key prefix starts and ends with '/', e.g. \"/svirt/\"")
        return value

    @field_validator("host_id")
    @classmethod
    def _host_id(cls, value: str) -> str:
        if value and not is_host_id(value):
            raise ValueError(f"{value!r}: {HOST_ID_RULE}")
        return value

    @model_validator(mode="after")
    def _complete(self) -> ClusterConfig:
        if self.backend == "etcd" and not self.endpoints:
            raise ValueError('endpoints: backend = "etcd" needs at least one etcd client URL')
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("cert_file and key_file: give both (the client certificate and its key) or neither")
        if self.cert_file and not any(u.startswith("https://") for u in self.endpoints):
            raise ValueError("cert_file: a client certificate needs https:// endpoints")
        return self


class GroupConfig(BaseModel):
    """[groups.NAME] in svirtd.conf: guests that share resources at the group's own level."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # The category only this group's members hold (cG): their pairs are {cG, cX}, its shared resources
    # s0:cG. Taken out of the automatic pairs, like reserved_categories.
    category: str
    members: tuple[str, ...]  # libvirt names or UUIDs

    @field_validator("category")
    @classmethod
    def _one_category(cls, value: str) -> str:
        if len(parse_categories(value)) != 1:
            raise ValueError(f"{value!r}: a group has exactly one category (e.g. \"c1000\")")
        return value

    @field_validator("members")
    @classmethod
    def _some_members(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value or len(set(value)) != len(value):
            raise ValueError("members: a non-empty list of distinct guest names or UUIDs")
        return value


class GuestGroup(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    category: int
    members: tuple[str, ...]


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Where the allocation table (SQLite) lives. Must be on local storage.
    state_dir: Path = Path("/var/lib/svirtd")
    # libvirt connection whose guests are confined.
    libvirt_uri: str = "qemu:///system"
    # D-Bus bus to serve on; empty = the system bus ($DBUS_SYSTEM_BUS_ADDRESS or the default socket).
    bus_address: str = ""
    # Categories automatic labels are drawn from (MCS syntax) and the ones never handed out.
    # The default is refpolicy's whole MCS range: 1024 categories = 523,776 pairs.
    categories: str = "c0.c1023"
    reserved_categories: str = ""
    # Mirror libvirt's security_default_confined / security_require_confined (qemu.conf).
    default_confined: bool = True
    require_confined: bool = False
    # Write <seclabel type='static' model='selinux' relabel='yes'> with the guest's label into its
    # definition, so libvirt execs qemu in it and labels the guest's files with its pair: "auto" = where
    # libvirt's SELinux driver is active (libvirt refuses to start such guests where it is not),
    # "always", "never".
    write_seclabels: Literal["auto", "always", "never"] = "auto"
    # Where svirtd tells its libvirt hook how to reach it (bus address, require_confined).
    hook_env_file: str = "/run/svirtd/hook.env"
    # Automatic confinement applies to guests whose name matches one of these shell patterns
    # (fnmatch); Isolate works on any guest. E.g. ["prod-*", "web??"].
    auto_confine_names: tuple[str, ...] = ("*",)
    # Put back the original labels of shared and read-only files when the last guest using them is
    # released. Set it to false (libvirt's way) when guests on OTHER hosts use the same files over
    # shared storage: svirtd only counts this host's guests.
    restore_shared: bool = True
    # Refuse to isolate a guest with a resource on storage that cannot carry labels (NFS, CIFS, FUSE,
    # vfat...) instead of isolating the rest and reporting the resource as "unlabelable".
    refuse_unlabelable: bool = False
    # MCS translations (s0:cA,cB=<guest name>) for mcstrans; include it from setrans.conf with
    # "Include=/run/svirtd/setrans.conf". Empty: no translation file.
    setrans_file: str = "/run/svirtd/setrans.conf"
    # Where AVC denials come from: "netlink" (the kernel's audit multicast; no auditd needed),
    # "file:/var/log/audit/audit.log" (follow auditd's log), or "none".
    audit_source: str = "netlink"
    # The compiled policy svirtd judges against (booleans, isolation proofs); empty = the host's own.
    policy_file: str = ""
    # Extra trees svirtd never relabels, on top of the built-in system trees.
    denied_paths: tuple[str, ...] = ()
    # Where libvirt keeps swtpm state (<dir>/<uuid>).
    swtpm_dir: str = "/var/lib/libvirt/swtpm"
    # Longest wait between reconnect attempts when libvirtd is down (seconds). A reconnect is one
    # unix-socket connect: cheap, and every second waited is a second of changes seen late.
    reconnect_max_seconds: float = Field(default=2.0, gt=0, le=3600)
    # Verify (the O(guests^2) isolation proof) runs after each libvirt (re)connection up to this many
    # isolated guests; above it only on demand (`svirtctl verify`). 0: only on demand.
    auto_verify_max_guests: int = Field(default=200, ge=0, le=1_000_000)
    # How long the storage of a guest's files may take to answer a lookup (seconds) before svirtd calls
    # it hung: a killable helper asks first, so a dead NFS server costs no thread; requests touching
    # it then fail at once (StorageNotResponding) until it answers again.
    io_timeout_seconds: float = Field(default=10.0, gt=0, le=600)
    # Running guests are re-read this often (seconds; 0: never) for changes libvirt sends no event
    # for: an external snapshot's overlay, media changed in a drive. Hotplug, unplug and block jobs
    # come with events and converge at once.
    rescan_seconds: float = Field(default=30.0, ge=0, le=86400)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # Where the allocation table lives: this host only, or an etcd cluster (issue 16; see ClusterConfig).
    cluster: ClusterConfig = ClusterConfig()
    # Guest groups (seed 3.3: controlled flow through shared resources): each member's pair holds the
    # group's category, so a resource at s0:cG is reachable by the members and by no other guest.
    # [groups.build] category = "c1000"  members = ["build1", "build2"]. A guest is in one group at most.
    groups: dict[str, GroupConfig] = Field(default_factory=dict)

    @field_validator("categories", "reserved_categories")
    @classmethod
    def _mcs_syntax(cls, value: str) -> str:
        parse_categories(value)
        return value

    @field_validator("audit_source")
    @classmethod
    def _audit_source(cls, value: str) -> str:
        if value not in ("netlink", "none") and not (value.startswith("file:/") and len(value) > 6):
            raise ValueError('expected "netlink", "none" or "file:/absolute/path"')
        return value

    @field_validator("denied_paths")
    @classmethod
    def _absolute(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for path in value:
            if not path.startswith("/"):
                raise ValueError(f"{path!r} is not an absolute path")
        return value

    @model_validator(mode="after")
    def _groups_apart(self) -> Config:
        if self.groups and self.cluster.backend != "local":
            # The etcd table allocates pairs cluster-wide without group categories (issue 16).
            raise ValueError('groups: not supported with [cluster] backend = "etcd" yet; use the local table')
        seen_cats: dict[int, str] = {}
        seen_members: dict[str, str] = {}
        for group in self.guest_groups:
            if group.category not in self.category_set or group.category in self.reserved_set:
                raise ValueError(f"groups.{group.name}: c{group.category} is not among the categories svirtd may "
                                 "hand out (categories minus reserved_categories)")
            if group.category in seen_cats:
                raise ValueError(f"groups.{group.name}: c{group.category} is already group "
                                 f"{seen_cats[group.category]}'s")
            seen_cats[group.category] = group.name
            for member in group.members:
                if member in seen_members:
                    raise ValueError(f"groups.{group.name}: {member} is already in group {seen_members[member]}")
                seen_members[member] = group.name
        return self

    @model_validator(mode="after")
    def _room_for_pairs(self) -> Config:
        usable = self.category_set - self.reserved_set - self.group_categories
        if len(usable) < 2:
            raise ValueError(
                f"categories {self.categories!r} minus reserved {self.reserved_categories!r} leaves "
                f"{format_categories(usable) or 'nothing'}: at least two categories are needed for one pair"
            )
        return self

    @property
    def category_set(self) -> frozenset[int]:
        return parse_categories(self.categories)

    @property
    def reserved_set(self) -> frozenset[int]:
        return parse_categories(self.reserved_categories)

    @property
    def guest_groups(self) -> tuple[GuestGroup, ...]:
        return tuple(GuestGroup(name=name, category=min(parse_categories(g.category)), members=g.members)
                     for name, g in sorted(self.groups.items()))

    @property
    def group_categories(self) -> frozenset[int]:
        return frozenset(g.category for g in self.guest_groups)

    @property
    def excluded_from_pairs(self) -> frozenset[int]:
        """Categories no automatic pair holds: the reserved ones and the groups'."""
        return self.reserved_set | self.group_categories

    def group_of(self, uuid: str, name: str) -> GuestGroup | None:
        """The group a guest (by UUID or libvirt name) is a member of."""
        return next((g for g in self.guest_groups if uuid in g.members or name in g.members), None)

    @property
    def database_path(self) -> Path:
        return self.state_dir / "state.db"

    @property
    def journal_dir(self) -> Path:
        """Original labels of directory-tree entries, journaled before each change."""
        return self.state_dir / "trees"


def load_config(path: Path | None, overrides: dict[str, object] | None = None) -> Config:
    """Read the TOML file (a missing default file means all defaults) and apply overrides."""
    data: dict[str, object] = {}
    where = str(path or DEFAULT_CONFIG_PATH)
    target = path or DEFAULT_CONFIG_PATH
    try:
        with target.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        if path is not None:
            raise ConfigError(f"{where}: no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: not valid TOML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"{where}: {exc.strerror}") from exc
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'file'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"{where}: {problems}") from None
