"""The thin collector of the soak's facts: svirtd's state database (read only), libvirt's definitions,
the labels of the soak's files, svirtd's journal directory, and svirtd's own word on guests it does not
isolate (Query's error, the log's refusals)."""

from __future__ import annotations

import errno
import os
import re
import sqlite3
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from pathlib import Path

import libvirt

from .invariants import ClaimFact, Definition, Facts, FileFact, Row

XATTR = "security.selinux"


def label(path: str) -> str | None:
    """The file's raw label; None when it has none (ENODATA). A vanished file says so."""
    try:
        return os.getxattr(path, XATTR, follow_symlinks=False).rstrip(b"\0").decode()
    except OSError as exc:
        if exc.errno == errno.ENODATA:
            return None
        return f"<{os.strerror(exc.errno or 0)}>"


def read_table(database: Path) -> tuple[list[Row], list[ClaimFact]]:
    if not database.exists():
        return [], []
    db = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)
    try:
        rows = [Row(*r) for r in db.execute("SELECT uuid, name, level, phase FROM assignments")]
        claims = [ClaimFact(*c) for c in db.execute("SELECT uuid, path, kind, dev, ino FROM claims")]
    finally:
        db.close()
    return rows, claims


def tree_files(root: str) -> list[str]:
    """The root and every entry under it: what a <filesystem> hands the guest."""
    found = [root]
    for dirpath, dirnames, filenames in os.walk(root):
        found += [os.path.join(dirpath, n) for n in dirnames + filenames]
    return found


def definition(dom: libvirt.virDomain, trees: dict[str, list[str]]) -> Definition:
    """One guest as libvirt has it now (the live definition while it runs). trees: a tree's files, by root."""
    xml = ET.fromstring(dom.XMLDesc(0))
    files: set[str] = set()
    for source in xml.iterfind("./devices/disk/source"):
        path = source.get("file") or source.get("dev")
        if path:
            files.add(path)
    for source in xml.iterfind("./devices/filesystem/source"):
        root = source.get("dir")
        if root:
            files.update(trees.get(root) or tree_files(root))
    level = None
    for seclabel in xml.iterfind("./seclabel[@model='selinux']"):
        text = seclabel.findtext("label") or ""
        if text.count(":") >= 3:
            level = text.split(":", 3)[3]
    return Definition(uuid=dom.UUIDString(), name=dom.name(), files=frozenset(files), seclabel_level=level)


def definitions(uri: str, prefix: str, trees: dict[str, list[str]]) -> list[Definition]:
    conn = libvirt.open(uri)
    try:
        found = []
        for dom in conn.listAllDomains():
            try:
                if dom.name().startswith(prefix):
                    found.append(definition(dom, trees))
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:  # undefined meanwhile
                    raise
        return found
    finally:
        conn.close()


def journals(journal_dir: Path) -> list[str]:
    return sorted(p.name for p in journal_dir.iterdir()) if journal_dir.is_dir() else []


def collect(database: Path, journal_dir: Path, uri: str, prefix: str, originals: dict[str, str | None],
            trees: dict[str, list[str]], reasons: dict[str, str]) -> Facts:
    """originals: every file the soak made, with the label it gave it. reasons: svirtd's word on the
    guests it does not isolate (see reasons_from)."""
    defs = definitions(uri, prefix, trees)
    rows, claims = read_table(database)
    files = [FileFact(path, original, label(path)) for path, original in originals.items()]
    return Facts(rows=rows, claims=claims, definitions=defs, files=files, journals=journals(journal_dir),
                 reasons=reasons)


def reasons_from(log_lines: Iterable[str], names: Iterable[str]) -> dict[str, str]:
    """What svirtd's log says about guests it left unconfined or refused (one line per guest, the last)."""
    wanted = set(names)
    found: dict[str, str] = {}
    for line in log_lines:
        if "unconfined" not in line.lower() and "refused" not in line.lower() and "not isolated" not in line:
            continue
        for name in wanted:
            if re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", line):
                found[name] = line.strip()
    return found
