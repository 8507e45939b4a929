"""The soak's random workload: defines, undefines, starts and stops (real qemu), Isolate and Release over
the bus, directory trees, hotplug. It remembers every file it made with the label it gave it (the
original the invariants check) and counts what it did; failures while svirtd or libvirtd is dead are
expected and only counted."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import threading
import uuid as uuidlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import libvirt

from testbed.client import CallFailed, SvirtClient
from testbed.guests import Disk, disk_xml, domain_xml, make_disk

from .collect import XATTR, tree_files

# Originals the soak gives its files: none at all, or a label of another type (as a copied image would have).
ORIGINALS: tuple[str | None, ...] = (None, "system_u:object_r:virt_image_t:s0", "unconfined_u:object_r:user_home_t:s0")


# ACPI: without it the pc machine's PCI bus takes no hotplugged disk.
FEATURES = "<features><acpi/></features>"


@dataclass
class Knobs:
    max_guests: int = 16  # defined at once
    max_running: int = 2  # real qemu guests at once (a 2-core machine)
    trees: int = 2  # directory trees, each used by at most one guest at a time
    tree_files: int = 200  # files per tree (the full soak: 20,000)


@dataclass
class World:
    """What the soak made: files and their originals, trees by root, guests by uuid (name, tree root)."""

    root: Path
    prefix: str
    originals: dict[str, str | None] = field(default_factory=dict)
    trees: dict[str, list[str]] = field(default_factory=dict)
    guests: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    count: int = 0

    def new_file(self, path: Path, rng: random.Random) -> Path:
        make_disk(path)
        original = rng.choice(ORIGINALS)
        if original is not None:
            os.setxattr(path, XATTR, original.encode())
        self.originals[str(path)] = original
        return path

    def make_trees(self, count: int, files: int, rng: random.Random) -> None:
        for t in range(count):
            root = self.root / f"tree{t}"
            for i in range(files):
                sub = root / f"d{i // 500}"
                sub.mkdir(parents=True, exist_ok=True)
                (sub / f"f{i}").write_bytes(b"x")
            original = rng.choice(ORIGINALS)
            listed = tree_files(str(root))
            for path in listed:
                if original is not None:
                    os.setxattr(path, XATTR, original.encode(), follow_symlinks=False)
                self.originals[path] = original
            self.trees[str(root)] = listed

    def free_tree(self) -> str | None:
        used = {tree for _name, tree in self.guests.values() if tree}
        free = [t for t in self.trees if t not in used]
        return free[0] if free else None


class Workload:
    """Random operations from one thread until stopped; `ops` counts outcomes by operation."""

    def __init__(self, world: World, uri: str, bus_address: str, knobs: Knobs, rng: random.Random) -> None:
        self.world, self.uri, self.bus_address, self.knobs, self.rng = world, uri, bus_address, knobs, rng
        self.ops: Counter[str] = Counter()
        self._halt = threading.Event()
        self.crashed: BaseException | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> Workload:
        self._halt.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._halt.set()
        if self._thread is not None:
            self._thread.join(120)
            if self._thread.is_alive():
                raise RuntimeError("the workload did not stop within 120 s (a call without a reply?)")
        if self.crashed is not None:
            raise RuntimeError("the workload crashed") from self.crashed

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # the soak's own bug: said by stop()
            self.crashed = exc

    async def _main(self) -> None:
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # counted in ops, not printed
        conn = libvirt.open(self.uri)
        try:
            async with SvirtClient(self.bus_address) as client:
                while not self._halt.is_set():
                    await self.step(conn, client)
                    await asyncio.sleep(0.005)
        finally:
            conn.close()

    async def step(self, conn: libvirt.virConnect, client: SvirtClient) -> None:
        ops = ["define", "undefine", "start", "stop", "isolate", "release", "hotplug"]
        op = self.rng.choices(ops, weights=[4, 2, 2, 2, 3, 2, 1])[0]
        try:
            done = await getattr(self, f"_{op}")(conn, client)
            self.ops[f"{op}:{'ok' if done else 'skipped'}"] += 1
        except libvirt.libvirtError as exc:
            self.ops[f"{op}:libvirt-error"] += 1
            self.ops[f"libvirt:{exc.get_error_code()}"] += 1
        except CallFailed as exc:
            self.ops[f"{op}:{exc.name.rsplit('.', 1)[-1]}"] += 1
        except TimeoutError:
            self.ops[f"{op}:timeout"] += 1

    def _pick(self, conn: libvirt.virConnect, running: bool | None = None) -> libvirt.virDomain | None:
        doms = [d for d in conn.listAllDomains() if d.name().startswith(self.world.prefix)
                and (running is None or bool(d.isActive()) == running)]
        return self.rng.choice(doms) if doms else None

    async def _define(self, conn: libvirt.virConnect, _client: SvirtClient) -> bool:
        if len(self.world.guests) >= self.knobs.max_guests:
            return False
        w = self.world
        w.count += 1
        name, uid = f"{w.prefix}-{w.count}", str(uuidlib.uuid4())
        disks = [Disk(w.new_file(w.root / f"{name}-{i}.img", self.rng), f"vd{chr(ord('a') + i)}")
                 for i in range(self.rng.randint(1, 2))]
        tree = w.free_tree() if self.rng.random() < 0.3 else None
        extra = (f"<filesystem type='mount' accessmode='passthrough'><source dir='{tree}'/><target dir='t'/>"
                 "</filesystem>") if tree else ""
        w.guests[uid] = (name, tree)  # before libvirt has it: a tree is never handed out twice
        try:
            conn.defineXML(domain_xml(name, uid, disks, extra_devices=extra, extra=FEATURES))
        except libvirt.libvirtError:
            del w.guests[uid]
            raise
        return True

    async def _undefine(self, conn: libvirt.virConnect, _client: SvirtClient) -> bool:
        dom = self._pick(conn)
        if dom is None:
            return False
        uid = dom.UUIDString()
        if dom.isActive():
            dom.destroy()
        dom.undefine()
        self.world.guests.pop(uid, None)
        return True

    async def _start(self, conn: libvirt.virConnect, _client: SvirtClient) -> bool:
        running = [d for d in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
                   if d.name().startswith(self.world.prefix)]
        if len(running) >= self.knobs.max_running:
            return False
        # Guests with a tree are not started: 9p in TCG qemu is not what this soak is about.
        doms = [d for d in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_INACTIVE)
                if d.name().startswith(self.world.prefix) and not self.world.guests.get(d.UUIDString(), ("", None))[1]]
        if not doms:
            return False
        self.rng.choice(doms).create()
        return True

    async def _stop(self, conn: libvirt.virConnect, _client: SvirtClient) -> bool:
        dom = self._pick(conn, running=True)
        if dom is None:
            return False
        dom.destroy()
        return True

    async def _isolate(self, conn: libvirt.virConnect, client: SvirtClient) -> bool:
        dom = self._pick(conn)
        if dom is None:
            return False
        await asyncio.wait_for(client.call("Isolate", "ss", dom.UUIDString(), ""), 60)
        return True

    async def _release(self, conn: libvirt.virConnect, client: SvirtClient) -> bool:
        dom = self._pick(conn)
        if dom is None:
            return False
        await asyncio.wait_for(client.call("Release", "s", dom.UUIDString()), 60)
        return True

    async def _hotplug(self, conn: libvirt.virConnect, _client: SvirtClient) -> bool:
        dom = self._pick(conn, running=True)
        if dom is None:
            return False
        w = self.world
        w.count += 1
        path = w.new_file(w.root / f"{w.prefix}-hot{w.count}.img", self.rng)
        dom.attachDeviceFlags(disk_xml(Disk(path, "vdz")), libvirt.VIR_DOMAIN_AFFECT_LIVE)
        return True


def remove_world(world: World) -> None:
    shutil.rmtree(world.root, ignore_errors=True)
