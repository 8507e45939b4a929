"""Issue 19, hostile input: every method svirtd serves, fuzzed over the real bus by hypothesis.

A real svirtd on the private bus (our policy file loaded) with two real guests it isolated. Real
clients, root and nobody (uid 65534, under setpriv; nobody once without polkitd, where only root may
change anything, and once with polkitd and no rules, where svirtd hands nobody's arguments to polkit),
send raw dbus-fast Messages (tests/integration/hostile_caller.py): every method of org.svirt.Manager1,
of org.svirt.Guest1 on the guests' objects, ObjectManager, Properties (Set too), Introspectable and
Peer, with right and wrong signatures, missing interfaces, unknown members and paths, and hostile
values: huge strings, NULs, lone surrogates, control and bidi characters, path traversal, the other
guest's name and UUID, hostile domain XML (tests/hostile_docs.py). What dbus-fast will not send (a
NUL or invalid UTF-8 in a string, a body not matching its signature) is forced onto the wire too.

Each call must be answered within 1 s by a success this caller may have (nobody: reading only) or
by an error in svirtd's typed set (dbus_errors.ERROR_NAMES) or a standard org.freedesktop.DBus.Error
that says what was wrong (never svirtd's generic Failed nor dbus-fast's ServiceError/InternalError,
which mean an exception nobody mapped); svirtd keeps its PID and answers; and after every call of
nobody's and every error, nothing changed on disk: the guests' images' labels (security.selinux),
svirtd's state database (every row), its state directory and the hook spool directory.

Examples: SVIRTD_FUZZ_EXAMPLES per caller (default 400: about 60 s for the three callers),
derandomized: the same calls on every run. A larger run:
  SVIRTD_FUZZ_EXAMPLES=5000 .venv/bin/pytest tests/integration/test_hostile_bus.py -k fuzzed -s
SVIRTD_FUZZ_SEED=N draws another fixed sequence; SVIRTD_FUZZ_VERBOSE=1 prints one call per kind of
answer.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from dbus_fast import Variant
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from svirtd.dbus_errors import ERROR_NAMES
from svirtd.dbus_guests import guest_path
from svirtd.xml_limits import MAX_XML_BYTES
from testbed.bus import PrivateBus
from testbed.daemon import SvirtdProcess
from testbed.guests import Guest, GuestFactory
from testbed.libvirtd import Libvirtd
from testbed.polkit import Polkitd
from tests.conftest import wait_until
from tests.hostile_docs import HOSTILE_DOCS, domain_doc
from tests.integration.hostile_caller import read_frame, write_frame

pytestmark = pytest.mark.integration
StartSvirtd = Callable[..., SvirtdProcess]
NOBODY = 65534
EXAMPLES = int(os.environ.get("SVIRTD_FUZZ_EXAMPLES", "400"))
SEED = int(os.environ.get("SVIRTD_FUZZ_SEED", "19"))
REPLY_WITHIN = 1.0
CALLER = Path(__file__).with_name("hostile_caller.py")

MANAGER = "/org/svirt/Manager"
M1, G1 = "org.svirt.Manager1", "org.svirt.Guest1"
PROPS, OM = "org.freedesktop.DBus.Properties", "org.freedesktop.DBus.ObjectManager"
INTRO, PEER = "org.freedesktop.DBus.Introspectable", "org.freedesktop.DBus.Peer"
INTERFACES = Path(__file__).resolve().parents[2] / "data" / "interfaces"


def methods_of(interface: str) -> dict[str, str]:
    """Every method of one of svirtd's interfaces with its in-signature, from the installed introspection
    XML (kept equal to the code by a test): a method added later is fuzzed too."""
    root = ET.parse(INTERFACES / f"{interface}.xml").getroot()
    node = root.find(f"interface[@name='{interface}']")
    assert node is not None
    return {m.attrib["name"]: "".join(a.attrib["type"] for a in m.findall("arg") if a.get("direction", "in") == "in")
            for m in node.findall("method")}


J1 = "org.svirt.Job1"
MANAGER_METHODS = methods_of(M1)
GUEST_METHODS = methods_of(G1)
JOB_METHODS = methods_of(J1)
STANDARD = {(PROPS, "Get"): "ss", (PROPS, "GetAll"): "s", (PROPS, "Set"): "ssv", (OM, "GetManagedObjects"): "",
            (INTRO, "Introspect"): "", (PEER, "Ping"): "", (PEER, "GetMachineId"): ""}
# What nobody may succeed at: reading. Everything else needs root (polkitd is not running).
READING = {"Query", "List", "GetGuest", "Get", "GetAll", "GetManagedObjects", "Introspect", "Ping", "GetMachineId"}
TYPED = set(ERROR_NAMES.values()) | {
    f"org.freedesktop.DBus.Error.{n}" for n in (
        "AccessDenied", "InvalidArgs", "UnknownMethod", "UnknownInterface", "UnknownObject", "UnknownProperty",
        "PropertyReadOnly", "InvalidSignature", "NotSupported", "LimitsExceeded")}
SIGNATURES = ["", "s", "ss", "sss", "ssv", "o", "u", "i", "t", "x", "b", "d", "y", "ay", "as", "a{sv}", "v",
              "(ss)", "a(sssss)", "g", "si", "us", "aas"]


@dataclass
class World:
    """What the calls are drawn from: the guests' names, UUIDs, images and object paths, the spool."""

    guests: list[Guest]
    spool: Path
    state_dir: Path
    strings: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for g in self.guests:
            self.strings += [g.name, g.uuid, g.uuid.upper(), g.uuid.replace("-", ""), "{" + g.uuid + "}",
                             g.uuid[:-1], g.name + "\n", " " + g.name, g.name.upper(), str(g.disk),
                             f"{g.disk.parent}/../../../../etc/shadow", guest_path(g.uuid)]
            self.paths.append(guest_path(g.uuid))
        self.strings += [
            "", " ", ".", "..", "/", "*", "%s%n%x", "'; DROP TABLE assignments; --", "-", "--help", "-h",
            "default", "nosmtp", "nonet", "../default", "prepare", "start", "migrate", "restore", "release",
            "\u202egnp.exe", "\ufeff", "\U0010ffff", "e\u0301", "\x7f", "\x1b[2J", "a\tb", "\r\n", "a\x00b", "\x00",
            "\ud800", "\udcff", "/etc/shadow", "/proc/self/environ", "../../../../etc/passwd", "~root",
            f"{self.spool}/1.xml", f"{self.spool}/../hook/1.xml", f"{self.spool}/.x.xml", f"{self.spool}",
            f"{self.state_dir}/svirtd.db", "/dev/null", "/dev/zero", "localhost", "org.svirt.Manager1",
            "org.svirt.Guest1", "Version", "CategoriesFree", "AuditStats", "Name", "UUID", "Resources",
            "00000000-0000-0000-0000-000000000000", "ffffffff-ffff-ffff-ffff-ffffffffffff",
            "zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz", "0" * 36, "x" * 256, "x" * 257]
        self.paths += ["/", MANAGER, f"{MANAGER}/guest", f"{MANAGER}/guest/_2e_2e", f"{MANAGER}/guest/x",
                       "/org/svirt", "/org/freedesktop/DBus", "/" + "a/" * 100 + "a"]


def strings(world: World) -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(world.strings),
        st.text(max_size=40),
        st.sampled_from([4096, 65536, 1 << 20, MAX_XML_BYTES + 1]).map(lambda n: "A" * n),  # huge
        st.builds(domain_doc, st.sampled_from([g.name for g in world.guests] + ["fuzz-other"]),
                  st.sampled_from([g.uuid for g in world.guests] + ["6f1c2f0e-8a52-4b4e-9a61-3b9a1c2d4e5f"]),
                  st.sampled_from([str(g.disk) for g in world.guests] + ["/etc/shadow", "/dev/sda",
                                                                          "/var/lib/libvirt/images/../../../etc"])),
        st.sampled_from(list(HOSTILE_DOCS)).map(lambda k: HOSTILE_DOCS[k]()),
    )


def values(sig: str, world: World) -> st.SearchStrategy[Any]:
    """A value of one complete D-Bus type `sig`."""
    simple: dict[str, st.SearchStrategy[Any]] = {
        "s": strings(world), "o": st.sampled_from(world.paths), "g": st.sampled_from(SIGNATURES),
        "u": st.integers(0, 2**32 - 1), "i": st.integers(-(2**31), 2**31 - 1), "t": st.integers(0, 2**64 - 1),
        "x": st.integers(-(2**63), 2**63 - 1), "b": st.booleans(), "y": st.integers(0, 255),
        "d": st.floats(allow_nan=True), "ay": st.binary(max_size=64), "as": st.lists(strings(world), max_size=4),
        "aas": st.lists(st.lists(st.text(max_size=8), max_size=3), max_size=3),
        "a{sv}": st.dictionaries(st.text(max_size=8), strings(world).map(lambda s: Variant("s", s)), max_size=3),
        "v": st.one_of(strings(world).map(lambda s: Variant("s", s)), st.integers(0, 9).map(lambda n: Variant("u", n)),
                       st.booleans().map(lambda b: Variant("b", b))),
        "(ss)": st.tuples(strings(world), strings(world)).map(list),
        "a(sssss)": st.lists(st.tuples(*[st.text(max_size=4)] * 5).map(list), max_size=2),
    }
    return simple[sig]


def complete_types(sig: str) -> list[str]:
    """'ssv' -> ['s', 's', 'v']; 'sa{sv}' -> ['s', 'a{sv}'] (the signatures of SIGNATURES only)."""
    out, i = [], 0
    while i < len(sig):
        j = i
        while sig[j] == "a":
            j += 1
        if sig[j] in "({":
            depth = 0
            for k in range(j, len(sig)):
                depth += sig[k] in "({"
                depth -= sig[k] in ")}"
                if depth == 0:
                    j = k
                    break
        out.append(sig[i:j + 1])
        i = j + 1
    return out


@st.composite
def requests(draw: st.DrawFn, world: World) -> dict[str, Any]:
    kind = draw(st.sampled_from(["manager", "manager", "manager", "guest", "job", "standard"]))
    interface: str | None
    if kind == "manager":
        path, interface = MANAGER, M1
        member, sig = draw(st.sampled_from(sorted(MANAGER_METHODS.items())))
    elif kind == "guest":
        path, interface = draw(st.sampled_from(world.paths)), G1
        member, sig = draw(st.sampled_from(sorted(GUEST_METHODS.items())))
    elif kind == "job":  # jobs live only while they run: mostly paths of none, sometimes a guest's
        path, interface = draw(st.sampled_from([f"{MANAGER}/job/{n}" for n in (0, 1, 2, 4294967295)] + world.paths)), J1
        member, sig = draw(st.sampled_from(sorted(JOB_METHODS.items())))
    else:
        (interface, member), sig = draw(st.sampled_from(sorted(STANDARD.items())))
        path = draw(st.sampled_from(world.paths))
    # Malformed: another signature, no interface (the daemon guesses), an unknown member.
    if draw(st.integers(0, 3)) == 0:
        sig = draw(st.sampled_from(SIGNATURES))
    if draw(st.integers(0, 9)) == 0:
        interface = None
    if draw(st.integers(0, 19)) == 0:
        member = draw(st.sampled_from(["NoSuchMethod", "isolate", "_report", "__init__", "Isolated", "Denied"]))
    body = [draw(values(t, world)) for t in complete_types(sig)]
    flags = draw(st.sampled_from([0, 0, 0, 4]))  # 4: ALLOW_INTERACTIVE_AUTHORIZATION
    return {"path": path, "interface": interface, "member": member, "signature": sig, "body": body, "flags": flags}


class Caller:
    """hostile_caller.py as a subprocess, as root or as another uid."""

    def __init__(self, address: str, user: int | None) -> None:
        cmd = [sys.executable, str(CALLER), address]
        if user is not None:
            cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *cmd]
        self.user = user
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def call(self, req: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        write_frame(self.proc.stdin, req)
        answer: dict[str, Any] | None = read_frame(self.proc.stdout)
        assert answer is not None, f"the caller process died (exit {self.proc.poll()})"
        return answer

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def labels(guests: list[Guest]) -> dict[str, bytes | None]:
    out: dict[str, bytes | None] = {}
    for g in guests:
        for d in g.disks:
            try:
                out[str(d.path)] = os.getxattr(d.path, "security.selinux")
            except OSError:
                out[str(d.path)] = None
    return out


def database(state_dir: Path) -> dict[str, list[tuple[Any, ...]]]:
    rows: dict[str, list[tuple[Any, ...]]] = {}
    for db in sorted(state_dir.glob("*.db")):
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            for (table,) in con.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name"):
                every_row = f'SELECT * FROM "{table}"'  # noqa: S608 - a name from sqlite_master
                rows[f"{db.name}:{table}"] = sorted(con.execute(every_row).fetchall(), key=repr)
        finally:
            con.close()
    return rows


def files(*dirs: Path) -> list[tuple[str, int]]:
    return sorted((str(p), p.stat().st_size) for d in dirs if d.is_dir() for p in d.rglob("*")
                  if p.is_file() and not p.name.endswith(("-wal", "-shm", ".log", ".sock")))


def snapshot(world: World) -> tuple[object, ...]:
    return labels(world.guests), database(world.state_dir), files(world.state_dir, world.spool)


def settled(world: World) -> tuple[object, ...]:
    """The disk state once svirtd's follow-up work of a successful root call (libvirt events of a
    rewritten definition, a release's steps) is over: two equal snapshots in a row."""
    last = snapshot(world)
    for _ in range(50):
        time.sleep(0.1)
        now = snapshot(world)
        if now == last:
            return now
        last = now
    raise AssertionError("svirtd's state did not settle within 5 s after a call")


@dataclass
class Tally:
    examples: int = 0
    kinds: dict[str, int] = field(default_factory=dict)
    slowest: float = 0.0
    slowest_call: str = ""
    samples: dict[str, str] = field(default_factory=dict)  # one call per kind of answer, for the summary
    polkit_said_no: int = 0  # refusals polkit decided (svirtd asked it), not the bus or "polkit is not running"

    def add(self, req: dict[str, Any], answer: dict[str, Any]) -> None:
        self.examples += 1
        key = answer["kind"] + (":" + answer["error"] if answer["kind"] == "error" else "")
        self.kinds[key] = self.kinds.get(key, 0) + 1
        self.polkit_said_no += "(polkit action org.svirt." in answer.get("text", "")
        self.samples.setdefault(key, f"{describe(req)[:150]} -> {answer.get('text', '')[:150]}")
        if answer["elapsed"] > self.slowest:
            self.slowest, self.slowest_call = answer["elapsed"], f"{req['interface']}.{req['member']}"


def describe(req: dict[str, Any]) -> str:
    body = [b if not isinstance(b, str) or len(b) < 200 else f"<{len(b)} chars: {b[:60]!r}...>" for b in req["body"]]
    return f"{req['path']} {req['interface']}.{req['member']}({req['signature']!r}) {body!r}"


def check(req: dict[str, Any], answer: dict[str, Any], user: int | None) -> None:
    what = f"{'nobody' if user else 'root'}: {describe(req)} -> {answer}"
    assert answer["kind"] != "timeout", f"no answer within 10 s: {what}"
    if answer["kind"] in ("unsendable", "disconnected"):
        return  # refused by the client library or by the bus itself (a NUL in a string): svirtd never saw it
    assert answer["elapsed"] < REPLY_WITHIN, f"answered after {answer['elapsed']:.2f}s: {what}"
    if answer["kind"] == "error":
        assert answer["error"] in TYPED, f"untyped error: {what}"
        return
    assert req["signature"] in declared(req["interface"], req["member"]), f"served a wrong signature: {what}"
    if user is not None:
        assert req["member"] in READING, f"nobody succeeded at changing something: {what}"


def declared(interface: str | None, member: str) -> set[str]:
    """The signatures a member takes (of any interface when the call names none)."""
    table = {**{(M1, m): sig for m, sig in MANAGER_METHODS.items()},
             **{(G1, m): sig for m, sig in GUEST_METHODS.items()},
             **{(J1, m): sig for m, sig in JOB_METHODS.items()}, **STANDARD}
    return {sig for (i, m), sig in table.items() if m == member and interface in (i, None)}


@pytest.fixture
def world(bus: PrivateBus, guests: GuestFactory, svirtd: StartSvirtd, libvirtd: Libvirtd) -> Iterator[tuple[World,
                                                                                                            SvirtdProcess]]:
    a, b = guests.new(), guests.new()
    proc = svirtd()
    spool = Path(libvirtd.hook_env).parent / "hook"
    w = World(guests=[a, b], spool=spool, state_dir=proc.state_dir)
    for g in (a, b):
        wait_until(lambda g=g: labels([g])[str(g.disk)], what=f"{g.name} labeled")  # type: ignore[misc]
    yield w, proc


def alive(proc: SvirtdProcess, pid: int, root: Caller) -> None:
    assert proc.proc is not None and proc.proc.pid == pid and proc.proc.poll() is None, proc.log_tail()
    ping = root.call({"path": MANAGER, "interface": PEER, "member": "Ping", "signature": "", "body": []})
    assert ping["kind"] == "return", ping


@pytest.mark.parametrize("user,polkit", [(NOBODY, False), (NOBODY, True), (None, False)],
                         ids=["nobody", "nobody-polkitd", "root"])
def test_every_method_fuzzed(bus: PrivateBus, world: tuple[World, SvirtdProcess], user: int | None, polkit: bool,
                             tmp_path: Path) -> None:
    """nobody-polkitd: polkitd runs (no rules: svirtd's actions' defaults, no agent to ask), so the
    checks of Isolate, Release, Verify and ForgetHost carry nobody's hostile arguments to polkit."""
    w, proc = world
    assert proc.proc is not None
    pid = proc.proc.pid
    polkitd = Polkitd(tmp_path / "polkit", bus.address, {}).start() if polkit else None
    caller, root = Caller(bus.address, user), Caller(bus.address, None)
    tally = Tally()
    started = time.monotonic()
    try:
        state = [settled(w)]

        @seed(SEED)
        @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
                  suppress_health_check=list(HealthCheck), print_blob=True)
        @given(req=requests(w))
        def fuzz(req: dict[str, Any]) -> None:
            answer = caller.call(req)
            tally.add(req, answer)
            check(req, answer, user)
            if user is None and answer["kind"] == "return":
                state[0] = settled(w)  # root may change things: the new state is the reference
            else:
                after = snapshot(w)
                assert after == state[0], f"{describe(req)} -> {answer}: the disk changed"
            alive(proc, pid, root)

        fuzz()
    finally:
        caller.close()
        root.close()
        if polkitd is not None:
            polkitd.stop()
    took = time.monotonic() - started
    who = ("nobody" + (" (polkitd running)" if polkit else "")) if user else "root"
    print(f"\nfuzzed {tally.examples} calls as {who} in {took:.1f}s; slowest "
          f"{tally.slowest:.3f}s ({tally.slowest_call}); answers: {dict(sorted(tally.kinds.items()))}; "
          f"refused by polkit: {tally.polkit_said_no}")
    if os.environ.get("SVIRTD_FUZZ_VERBOSE"):
        print("\n".join(f"  {k}: {v}" for k, v in sorted(tally.samples.items())))
    assert tally.examples >= min(EXAMPLES, 50)
    assert (tally.polkit_said_no > 0) == polkit, f"{tally.polkit_said_no} refusals by polkit"
    assert "Traceback" not in proc.log_text(), proc.log_tail(80)


def test_a_wrong_signature_is_refused_also_by_svirtds_own_handlers(bus: PrivateBus,
                                                                   world: tuple[World, SvirtdProcess]) -> None:
    """Found by the fuzzing: GetManagedObjects (answered by svirtd's own message handler on the
    manager's path, by dbus-fast's on the others; neither looks at the signature) served calls whatever
    their signature."""
    w, _ = world
    caller = Caller(bus.address, NOBODY)
    try:
        for path in (MANAGER, w.paths[0], "/"):
            for sig, body in (("s", ["x"]), ("u", [1]), ("", [])):
                req = {"path": path, "interface": OM, "member": "GetManagedObjects", "signature": sig, "body": body}
                answer = caller.call(req)
                check(req, answer, NOBODY)
                assert (answer["kind"] == "return") == (sig == ""), answer
    finally:
        caller.close()


@pytest.mark.parametrize("member,body", [
    ("HookEvent", ["prepare", "/" + "A" * (5 << 20)]),
    ("HookEvent", ["A" * (5 << 20), "x"]),
    ("Isolate", ["GUEST", "A" * (5 << 20)]),
    ("ForgetHost", ["A" * (5 << 20)]),
], ids=["spool-name", "operation", "profile", "host"])
def test_huge_arguments_are_not_echoed_back(bus: PrivateBus, world: tuple[World, SvirtdProcess], member: str,
                                            body: list[str]) -> None:
    """Found by the fuzzing: an error message quoted the caller's argument whole, so an 8 MiB argument
    came back as an 8 MiB error (and went to the journal)."""
    w, proc = world
    caller = Caller(bus.address, None)
    try:
        body = [w.guests[0].name if b == "GUEST" else b for b in body]
        req = {"path": MANAGER, "interface": M1, "member": member, "signature": "s" * len(body), "body": body}
        answer = caller.call(req)
        check(req, answer, None)
        assert answer["kind"] == "error" and answer["error"].startswith("org.svirt.Manager1.Error."), answer["error"]
        text = proc.log_text()
        assert answer["text_len"] < 2000, f"{answer['text_len']} chars of error text"
    finally:
        caller.close()
    assert len(text) < 1 << 20, f"svirtd's log grew to {len(text)} chars"


WIRE = {  # what dbus-fast refuses to send, forced onto the wire: (method, signature, body, old bytes, new bytes)
    "NUL in a string": ("Query", "s", ["ab\x01cd"], b"ab\x01cd", b"ab\x00cd"),
    "invalid UTF-8": ("Query", "s", ["ab\u00e9cd"], b"ab\xc3\xa9cd", b"ab\xff\xfecd"),
    "overlong UTF-8 '/'": ("Isolate", "ss", ["x\u00e9y", ""], b"x\xc3\xa9y", b"x\xc0\xafy"),
    "string longer than the body": ("Query", "s", ["wxyz"], b"\x04\x00\x00\x00wxyz", b"\xff\xff\xff\x7fwxyz"),
    "signature not matching the body": ("Query", "s", ["qwerty"], b"\x08\x01g\x00\x01s\x00",
                                        b"\x08\x01g\x00\x01u\x00"),
    "invalid object path": ("Query", "s", ["x"], b"/org/svirt/Manager\x00", b"/org/svirt//anager\x00"),
    # The control: a patch that leaves the message valid is delivered and answered (the test can tell).
    "valid (control)": ("Query", "s", ["ab\x01cd"], b"ab\x01cd", b"ab\x02cd"),
}


def test_malformed_wire_messages_never_reach_svirtd(bus: PrivateBus, world: tuple[World, SvirtdProcess]) -> None:
    """D-Bus forbids NULs and invalid UTF-8 in strings and requires the body to match the signature:
    dbus-daemon validates every message and drops the sender's connection. svirtd never sees it and
    stays as it was."""
    w, proc = world
    assert proc.proc is not None
    pid = proc.proc.pid
    callers = {"nobody": Caller(bus.address, NOBODY), "root": Caller(bus.address, None)}
    try:
        before = snapshot(w)
        for who, caller in callers.items():
            for case, (member, sig, body, old, new) in WIRE.items():
                answer = caller.call({"path": MANAGER, "interface": M1, "member": member, "signature": sig,
                                      "body": body, "patch": (old, new)})
                want = "answered" if case == "valid (control)" else "disconnected"
                assert answer["kind"] == want, f"{who}, {case}: {answer}"
                assert snapshot(w) == before, f"{who}, {case}"
                alive(proc, pid, callers["root"])
    finally:
        for caller in callers.values():
            caller.close()
