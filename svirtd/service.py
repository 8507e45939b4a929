"""svirtd's composition root and lifecycle: config -> store -> core -> edges; sd_notify; signals.

The only module that knows every other one. Start order: state database and allocation table
(recover anything a crash interrupted) -> D-Bus name (the API and the libvirt hook answer even while
libvirtd is away) -> libvirt watcher (reconciles on every connect) -> READY=1 once libvirt's guests are
reconciled (at once when no libvirt daemon runs yet: see libvirt_presence). SIGHUP: reload what can
change without a restart. SIGTERM: STOPPING=1, stop taking events, let in-flight work finish, close.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import gc
import logging
import os
import shlex
import signal
import socket
import sys
from pathlib import Path

from dbus_fast import BusType
from dbus_fast.aio import MessageBus

from . import __version__, hook_spool, labels, message_ids, sd_notify, selinux_host
from .allocator import CategorySpace, PairAllocator
from .audit_watch import AuditCounters, FileAuditSource, MachineIdEmitter, NetlinkAuditSource
from .authz import Authorizer
from .cluster_book import ClusterBook
from .cluster_model import ClusterAllocator
from .config import DEFAULT_CONFIG_PATH, Config, load_config
from .dbus_guests import GuestObjects, ObjectManagerBus
from .dbus_iface import BUS_NAME, ManagerInterface, export
from .denial_tracker import DenialTracker
from .errors import ConfigError
from .etcd_client import EtcdClient
from .libvirt_presence import daemon_running
from .libvirt_watch import DomainEvent, LibvirtWatcher
from .logsetup import setup_logging
from .manager import Listener, Listeners, Manager
from .policy_judge import PolicyJudge, host_policy_file
from .reload import ReloadPlan, plan_reload
from .sd_notify import Notifier, notify
from .setrans import TranslationFile, write_atomically
from .state_db import UnusableStateDatabase
from .store import Store

log = logging.getLogger("svirtd")

# sysexits.h EX_CONFIG: a configuration error, or a state database svirtd cannot trust (state_db.py). The
# unit's RestartPreventExitStatus= names it, so neither is restarted in a loop: it waits for the admin
# (svirtd --check-config says what is wrong with the config; the journal names the database and the remedy).
EX_CONFIG = 78
# How long `systemctl start svirtd` may wait for the first reconcile with a running libvirt.
READY_WAIT_SECONDS = 60.0
# How often properties that change by themselves (LibvirtConnected, Enforcing, AuditStats) are looked at.
PUBLISH_SECONDS = 1.0
# The compiled policy (~11 MB in memory) is let go after this long without a question (a proof, a denial to
# explain); the next question reads it again (0.2 s).
POLICY_IDLE_SECONDS = 30.0


async def connect_bus(config: Config) -> MessageBus:
    if config.bus_address:
        return await ObjectManagerBus(bus_address=config.bus_address).connect()
    return await ObjectManagerBus(bus_type=BusType.SYSTEM).connect()


class Daemon:
    """The wired daemon. start() builds it in order, run_until_stopped() serves, stop() tears down."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.store = Store(config.database_path)
        # Group categories are never part of an automatic pair: only members' pairs hold them.
        self.space = CategorySpace(config.category_set, config.excluded_from_pairs)
        etcd = config.cluster.backend == "etcd"
        self.allocator = ClusterAllocator(self.space) if etcd else PairAllocator(self.space)
        self.count = Manager.load_table(self.store, self.allocator)
        self.judge = PolicyJudge(Path(config.policy_file) if config.policy_file else host_policy_file())
        self.watcher = LibvirtWatcher(config.libvirt_uri, on_event=self._on_event, on_connected=self._on_connected,
                                      reconnect_max=config.reconnect_max_seconds)
        self.manager = Manager(config, self.store, self.allocator, selinux_host.load_label_spec(), self.watcher,
                               defaults=selinux_host.DefaultLabels(), judge=self.judge,
                               selinux_enabled=selinux_host.is_enabled())
        self.cluster = self._cluster_book() if etcd else None
        self.translations = (TranslationFile(Path(config.setrans_file), self.store.translation_rows)
                             if config.setrans_file else None)
        self.audit_counters = AuditCounters()
        self.denials = DenialTracker(self.manager.guest_at, self.judge)
        self.audit_source = self._audit_source(config.audit_source)
        self.bus: MessageBus | None = None
        self._rescans: asyncio.Task[None] | None = None
        self._verify: asyncio.Task[None] | None = None
        self._publisher: asyncio.Task[None] | None = None
        self.iface: ManagerInterface | None = None
        self.notifier = Notifier(self.status)
        self._reload_note = ""  # a failed reload, shown in STATUS= until the next one succeeds
        self.config_path: Path | None = None  # what a reload reads again
        self.overrides: dict[str, object] = {}
        self.config_existed = False  # a file that vanishes later is refused, not read as all defaults
        self.reloading = asyncio.Lock()

    def _cluster_book(self) -> ClusterBook:
        """Issue 16: the pair <-> UUID bindings in etcd, this host's store as their cache."""
        c = self.config.cluster
        assert isinstance(self.allocator, ClusterAllocator)
        client = EtcdClient(c.endpoints, c.timeout_seconds, c.ca_file, c.cert_file, c.key_file)
        book = ClusterBook(c, c.host_id or socket.gethostname(), self.store, self.manager.levels, self.allocator,
                           client)
        self.manager.cluster = book
        book.on_available = self._cluster_back
        return book

    async def _cluster_back(self) -> None:
        """etcd answers again: guests refused meanwhile are isolated now."""
        if self.watcher.connected:
            await self.manager.reconcile()
        self.notifier.status_now()

    def _audit_source(self, source: str) -> NetlinkAuditSource | FileAuditSource | None:
        if source == "netlink":
            return NetlinkAuditSource(self.denials.on_record, self.audit_counters)
        if source.startswith("file:"):
            return FileAuditSource(Path(source[5:]), self.denials.on_record, self.audit_counters)
        return None

    def audit_stats(self) -> dict[str, int]:
        return {**self.audit_counters.as_dict(), "attributed": self.denials.attributed,
                "unattributed": self.denials.unattributed}

    def _on_event(self, event: DomainEvent) -> None:
        self.manager.on_event(event)

    async def _on_connected(self) -> None:
        await self.manager.reconcile()
        self.notifier.status_now()
        if self.iface is not None:
            self.iface.publish_changes()  # LibvirtConnected at once, not at the next look
        guests = self.store.count()
        if guests > self.config.auto_verify_max_guests:
            # The proof is O(guests^2) policy decisions (1,000 guests: ~4M, ~50 s of CPU): not on
            # every reconnect. Query says "not verified yet"; `svirtctl verify` runs it on demand.
            log.info("%d guests (auto_verify_max_guests = %d): isolation is verified on demand "
                     "(svirtctl verify), not after each reconnect", guests, self.config.auto_verify_max_guests)
        elif self.judge.policy_file is not None and (self._verify is None or self._verify.done()):
            # After, not inside, the reconcile: readiness waits for guests to be confined, not proven.
            self._verify = asyncio.create_task(self._verify_now(), name="verify-after-connect")

    async def _publish_changes(self, iface: ManagerInterface) -> None:
        while True:
            try:
                iface.publish_changes()
            except Exception:  # said, and tried again: a stale property is no reason to stop
                log.exception("publishing property changes failed")
            if self.judge.loaded and await asyncio.to_thread(self.judge.release_if_idle, POLICY_IDLE_SECONDS):
                log.debug("the compiled policy is let go until the next question")
            await asyncio.sleep(PUBLISH_SECONDS)

    async def _verify_now(self) -> None:
        try:
            await self.manager.verify()
        except Exception as exc:  # a proof that cannot run must not stop confinement
            log.warning("isolation could not be verified: %s", exc)

    def status(self) -> str:
        """The STATUS= line `systemctl status svirtd` shows."""
        libvirt = "libvirt connected" if self.watcher.connected else "libvirt not connected (retrying)"
        text = f"{self.store.count()} guests isolated, {self.manager.unconfined_count} unconfined, {libvirt}"
        if self.cluster is not None:
            text += f", etcd {self.cluster.status.state.value}"
        return f"{text}; {self._reload_note}" if self._reload_note else text

    async def start(self) -> None:
        if self.cluster is not None:  # before anything may ask for a pair: new pairs wait for etcd's word
            await self.cluster.start()
            await self.cluster.wait_first_attempt(READY_WAIT_SECONDS)
        await self.manager.recover()
        self.bus = await connect_bus(self.config)
        spool = hook_spool.spool_dir(self.config.hook_env_file)
        if spool is not None:
            hook_spool.prepare(spool)
        iface = ManagerInterface(self.manager, Authorizer(self.bus), enforcing=selinux_host.is_enforcing,
                                 connected=lambda: self.watcher.connected, denials=self.denials,
                                 audit_stats=self.audit_stats, spool=spool,
                                 cluster_state=self.cluster.describe if self.cluster is not None else None)
        self.denials.emit = iface.denied
        spec = self.manager.spec
        machine_ids = MachineIdEmitter(lambda a: str(self.manager.process_label(a, self.manager.is_tcg(a.uuid))),
                                       lambda a: str(spec.image_label(a.level)))
        listeners: list[Listener] = [iface, self.denials, machine_ids]
        if self.translations is not None:
            self.translations.write_now()
            listeners.append(self.translations)
        self.manager.listener = Listeners(*listeners)
        await export(self.bus, iface)
        iface.guests = GuestObjects(self.bus, self.manager, iface)
        iface.guests.start()
        self.iface = iface
        self._publisher = asyncio.create_task(self._publish_changes(iface), name="publish-properties")
        self._write_hook_env()
        log.info("svirtd %s serving %s; %d guests in the table, %d of %d category pairs free (%s)", __version__,
                 BUS_NAME, self.count, self.allocator.free, self.allocator.total, self.space.describe())
        if not selinux_host.is_enforcing():
            log.warning("SELinux is not enforcing on this host: labels are kept but the kernel does not apply them")
        if selinux_host.is_enabled() and not labels.can_read_trusted_xattrs():
            # Only where libvirt's own SELinux driver can be at work. Said once, here: without the
            # capability, a file that driver manages is not recognized.
            log.warning("without CAP_SYS_ADMIN svirtd cannot see libvirt's remembered labels (trusted.libvirt.*): "
                        "a file a guest under libvirt's own SELinux driver uses is not refused. Run guests under "
                        "one of the two, or grant the capability (systemctl edit svirtd, see the unit's comments)")
        if self.judge.policy_file is not None:
            try:
                await asyncio.to_thread(self.judge.load)
            except (OSError, ValueError) as exc:  # explanations and Verify say "unknown" instead
                log.warning("cannot read the policy %s: %s", self.judge.policy_file, exc)
        if self.audit_source is not None:
            try:
                self.audit_source.start()
            except OSError as exc:  # denials go unexplained, confinement goes on
                log.error("cannot watch audit records (%s); set audit_source in svirtd.conf", exc)
        await self.watcher.start()
        self._start_rescans()
        if daemon_running(self.config.libvirt_uri):
            # Ready means: the guests libvirt has are confined (or the first attempt to reach it failed).
            await self.watcher.wait_first_attempt(timeout=READY_WAIT_SECONDS)
        log.info("ready: %s", self.status(), extra=message_ids.message_fields(message_ids.DAEMON_READY))
        # What start-up made (modules, the policy, the guests reconciled) stays for good: out of the
        # collector's sight, a full collection does not walk it again (one held the loop 61 ms at 1,000
        # guests under a burst of defines).
        gc.freeze()
        self.notifier.ready()
        self.notifier.start()

    def _start_rescans(self) -> None:
        if self._rescans is not None:
            self._rescans.cancel()
            self._rescans = None
        if self.config.rescan_seconds > 0:
            self._rescans = asyncio.create_task(self.manager.run_rescans(self.config.rescan_seconds),
                                                name="rescan-running-guests")

    async def reload(self) -> ReloadPlan | None:
        """SIGHUP: read the config file again and apply what can change without a restart (see
        reload.py). A file that does not validate, or that has vanished, changes nothing: svirtd goes
        on as it was. READY=1 ends the reload whatever happens (systemd would wait for it)."""
        notify("RELOADING=1")
        try:
            return await self._reload()
        finally:
            notify("READY=1")
            self.notifier.status_now()

    async def _reload(self) -> ReloadPlan | None:
        where = self.config_path or DEFAULT_CONFIG_PATH
        try:
            if self.config_existed and not where.exists():
                raise ConfigError(f"{where}: no such file (it was there when svirtd started; a missing file "
                                  "would mean all defaults, require_confined = false included)")
            wanted = load_config(self.config_path, self.overrides)
        except ConfigError as exc:
            log.error("reload refused, svirtd goes on with its running configuration: %s", exc)
            self._reload_note = f"last reload failed: {exc}"
            return None
        plan = plan_reload(self.config, wanted)
        old, self.config = self.config, plan.config
        self.manager.config = self.manager.converger.config = plan.config
        self.manager.storage.timeout = plan.config.io_timeout_seconds
        self.watcher.reconnect_max = plan.config.reconnect_max_seconds
        if plan.config.log_level != old.log_level:
            logging.getLogger().setLevel(plan.config.log_level.upper())
        if plan.config.require_confined != old.require_confined:
            self._write_hook_env()
        if plan.config.rescan_seconds != old.rescan_seconds:
            self._start_rescans()
        self._reload_note = ""
        log.info("configuration reloaded from %s: %s", where, plan.describe(),
                 extra=message_ids.message_fields(message_ids.CONFIG_RELOADED))
        if plan.reconfine and self.watcher.connected:
            await self.manager.reconcile()  # guests automatic confinement now covers, or no longer does
        return plan

    async def run_reloads(self, requested: asyncio.Event, started: asyncio.Event) -> None:
        """One reload per SIGHUP burst, one at a time, never before the start is over (a SIGHUP during
        the start is kept for after it: systemd counts death by SIGHUP as a clean exit)."""
        await started.wait()
        while True:
            await requested.wait()
            requested.clear()
            async with self.reloading:
                try:
                    await self.reload()
                except Exception:
                    log.exception("reload failed")

    def _write_hook_env(self) -> None:
        """Tell the libvirt hook how to reach us (its environment is sanitized by libvirtd). Kept after
        svirtd stops: require_confined must hold while svirtd is down."""
        if not self.config.hook_env_file:
            return
        address = self.config.bus_address or os.environ.get("DBUS_SYSTEM_BUS_ADDRESS", "")
        text = ("# Written by svirtd at start: how its libvirt hook reaches it. Do not edit.\n"
                f"SVIRTD_BUS={shlex.quote(address)}\n"
                f"SVIRTD_REQUIRE_CONFINED={1 if self.config.require_confined else 0}\n")
        try:
            write_atomically(Path(self.config.hook_env_file), text)
        except OSError as exc:
            log.warning("cannot write %s for the libvirt hook: %s", self.config.hook_env_file, exc)

    async def run_until_stopped(self) -> int:
        """Serve until SIGTERM/SIGINT (0) or until the bus connection is lost (1: let systemd restart us)."""
        assert self.bus is not None
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        bus_gone = asyncio.ensure_future(self.bus.wait_for_disconnect())  # type: ignore[no-untyped-call]
        stopper = asyncio.ensure_future(stop.wait())
        await asyncio.wait({bus_gone, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if bus_gone.done():
            log.error("lost the D-Bus connection; exiting so systemd restarts svirtd")
            return 1
        bus_gone.cancel()
        return 0

    async def stop(self) -> None:
        notify("STOPPING=1")
        log.info("stopping")
        await self.notifier.stop()
        for task in (self._publisher,):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._verify is not None:
            self._verify.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._verify
        if self.audit_source is not None:
            self.audit_source.stop()
        if self._rescans is not None:
            self._rescans.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._rescans
        await self.watcher.stop()
        await self.manager.drain()
        if self.cluster is not None:
            await self.cluster.stop()
        self.manager.storage.close()
        if self.translations is not None:
            await self.translations.flush()
        if self.bus is not None:
            self.bus.disconnect()
        self.store.close()


# Worker threads for file I/O (probes, relabels, Query's look at the disks). A guest on hung storage
# (a dead NFS server) holds one until the storage answers; asyncio's default, cores + 4, would let a
# handful of such guests stall every other guest's file work.
IO_THREADS = 64


async def run(config: Config, config_path: Path | None = None, overrides: dict[str, object] | None = None) -> int:
    loop = asyncio.get_running_loop()
    loop.set_default_executor(
        concurrent.futures.ThreadPoolExecutor(max_workers=IO_THREADS, thread_name_prefix="svirtd-io"))
    # SIGHUP from the first moment (log rotation, `systemctl reload` racing a start): a reload, later.
    reload_requested, started = asyncio.Event(), asyncio.Event()
    loop.add_signal_handler(signal.SIGHUP, reload_requested.set)
    log.info("svirtd %s starting with %s", __version__, config_path or DEFAULT_CONFIG_PATH)
    daemon = Daemon(config)
    daemon.config_path, daemon.overrides = config_path, dict(overrides or {})
    daemon.config_existed = (config_path or DEFAULT_CONFIG_PATH).exists()
    reloads = asyncio.create_task(daemon.run_reloads(reload_requested, started), name="reloads")
    try:
        await daemon.start()
        started.set()
        return await daemon.run_until_stopped()
    finally:
        async with daemon.reloading:  # a reload under way finishes (it may be relabeling), none starts
            reloads.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reloads
        if started.is_set():
            await daemon.stop()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="svirtd", description="sVirt daemon: per-guest SELinux MCS isolation")
    p.add_argument("--config", type=Path, default=None, help="TOML config (default /etc/svirt/svirtd.conf)")
    p.add_argument("--check-config", action="store_true",
                   help=f"validate the config and exit: 0 if svirtd can run with it, {EX_CONFIG} if not")
    p.add_argument("--bus-address", default=None,
                   help="D-Bus address to serve on instead of the system bus (tests, private buses)")
    p.add_argument("--state-dir", type=Path, default=None, help="override state_dir from the config")
    p.add_argument("--libvirt-uri", default=None, help="override libvirt_uri from the config")
    p.add_argument("--log-level", default=None, choices=["debug", "info", "warning", "error"])
    p.add_argument("--version", action="version", version=f"svirtd {__version__}")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    sd_notify.adopt_environment()  # before any helper process is started: none inherits it
    args = parse_args(argv)
    overrides: dict[str, object] = {
        "bus_address": args.bus_address,
        "state_dir": args.state_dir,
        "libvirt_uri": args.libvirt_uri,
        "log_level": args.log_level,
    }
    where = args.config or DEFAULT_CONFIG_PATH
    try:
        config = load_config(args.config, overrides)
    except ConfigError as exc:
        print(f"svirtd: {exc}", file=sys.stderr)
        if not args.check_config:
            print(f"svirtd: not starting: mend {where} (svirtd --check-config checks it again)", file=sys.stderr)
            notify(f"STATUS=Configuration error: {exc}")
        return EX_CONFIG
    if args.check_config:
        source = where if where.exists() else f"defaults ({where} does not exist)"
        print(f"svirtd: configuration OK: {source}")
        return 0
    setup_logging(config.log_level)
    try:
        return asyncio.run(run(config, args.config, overrides))
    except UnusableStateDatabase as exc:  # the admin's to mend; a restart would only fail again
        log.critical("svirtd cannot run: %s", exc)
        notify(f"STATUS=State database unusable: {exc.path} (see the journal)")
        return EX_CONFIG
    except Exception as exc:
        log.critical("svirtd cannot run: %s", exc, exc_info=config.log_level == "debug")
        notify(f"STATUS=Failed: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
