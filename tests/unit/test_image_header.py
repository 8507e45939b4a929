"""The backing file a qcow2 header names (pure parser), on headers qemu-img really writes and on
hostile ones."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest

from svirtd.image_header import HEADER_BYTES, Backing, HeaderError, UnsafeBacking, qcow2_backing


def qcow2(tmp_path: Path, name: str, *args: str) -> bytes:
    path = tmp_path / name
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", *args, str(path), "1M"], check=True, cwd=tmp_path)
    return path.read_bytes()[:HEADER_BYTES]


def test_relative_absolute_and_formats_as_qemu_img_writes_them(tmp_path: Path) -> None:
    (tmp_path / "base.img").write_bytes(b"\0" * 512)
    assert qcow2_backing(qcow2(tmp_path, "a.qcow2", "-b", "base.img", "-F", "raw"), "/img/a.qcow2") == \
        Backing("/img/base.img", "raw")
    assert qcow2_backing(qcow2(tmp_path, "b.qcow2", "-b", str(tmp_path / "base.img"), "-F", "raw"),
                         "/img/b.qcow2") == Backing(str(tmp_path / "base.img"), "raw")
    assert qcow2_backing(qcow2(tmp_path, "c.qcow2", "-b", "a.qcow2", "-F", "qcow2"), "/img/c.qcow2") == \
        Backing("/img/a.qcow2", "qcow2")
    v2 = qcow2(tmp_path, "d.qcow2", "-o", "compat=0.10", "-b", "base.img", "-F", "raw")
    assert qcow2_backing(v2, "/img/d.qcow2") == Backing("/img/base.img", "raw")
    assert qcow2_backing(qcow2(tmp_path, "e.qcow2"), "/img/e.qcow2") is None


def test_a_name_climbing_with_dot_dot_is_refused(tmp_path: Path) -> None:
    """Lexically ../../etc/shadow is /var/lib/etc/shadow, but through a symlinked directory qemu may
    open another file: svirtd does not guess."""
    header = qcow2(tmp_path, "x.qcow2", "-u", "-b", "../../etc/shadow", "-F", "raw")
    with pytest.raises(UnsafeBacking):
        qcow2_backing(header, "/var/lib/libvirt/images/x.qcow2")


def _header(backing: bytes, offset: int = 512) -> bytes:
    head = bytearray(HEADER_BYTES)
    head[:4] = b"QFI\xfb"
    struct.pack_into(">IQI", head, 4, 3, offset, len(backing))
    struct.pack_into(">I", head, 100, 104)  # header_length: extensions (none: end marker) follow
    head[offset:offset + len(backing)] = backing
    return bytes(head[:HEADER_BYTES])  # what svirtd reads of an image


@pytest.mark.parametrize(("header", "why"), [
    (b"\0" * 200, "magic"),
    (b"QFI\xfb" + struct.pack(">I", 9) + bytes(200), "version"),
    (_header(b"x" * 20, offset=HEADER_BYTES - 4), "outside"),
    (_header(b"\xff\xfe"), "UTF-8"),
    (_header(b"a\0b"), "NUL"),
    (_header(b"nbd:localhost:10809"), "not a local file"),
    (_header(b"json:{\"file.driver\":\"http\"}"), "not a local file"),
])
def test_hostile_or_foreign_headers_are_refused(header: bytes, why: str) -> None:
    with pytest.raises(HeaderError, match=why):
        qcow2_backing(header, "/img/x.qcow2")


def test_no_backing_format_recorded_is_a_single_layer() -> None:
    assert qcow2_backing(_header(b"base.img"), "/img/x.qcow2") == Backing("/img/base.img", "")
