"""The backing file a qcow2 image names in its header (pure: bytes in, names out).

libvirt probes the backing chain of a disk whose definition names no <backingStore> when qemu starts;
svirtd reads the same header fields so that, where it labels files itself, every layer qemu will open
carries the read-only label before qemu opens it. Only the format the definition declares is parsed
(never guessed from the content: a guest writing a qcow2 header into its raw disk must not steer
svirtd), and only a backing format recorded in the image is followed further (as libvirt does since
6.0); a backing file without one is a single read-only layer.
"""

from __future__ import annotations

import posixpath
import struct
from dataclasses import dataclass

QCOW2_MAGIC = b"QFI\xfb"
HEADER_BYTES = 64 * 1024  # the header, its extensions and the backing name fit in the first cluster
MAX_BACKING_NAME = 1023  # qcow2's own limit
_EXT_END = 0x00000000
_EXT_BACKING_FORMAT = 0xE2792ACA
_V2_HEADER_LENGTH = 72


class HeaderError(ValueError):
    """The header is not a qcow2 header svirtd can read."""


class UnsafeBacking(HeaderError):
    """The header names its backing file with '..': resolved lexically it may not be the file qemu opens
    through a symlinked directory, so svirtd refuses to guess."""


@dataclass(frozen=True)
class Backing:
    path: str  # absolute: a relative name is taken relative to the image's directory, as qemu does
    format: str  # '' when the image records none


def qcow2_backing(header: bytes, image_path: str) -> Backing | None:
    """The backing file named by a qcow2 header, or None when the image has none."""
    if len(header) < _V2_HEADER_LENGTH or header[:4] != QCOW2_MAGIC:
        raise HeaderError("not a qcow2 image (no QFI\\xfb magic)")
    version, backing_offset, backing_size = struct.unpack_from(">IQI", header, 4)
    if version not in (2, 3):
        raise HeaderError(f"qcow2 version {version} is not supported")
    if backing_offset == 0 or backing_size == 0:
        return None
    if backing_size > MAX_BACKING_NAME or backing_offset + backing_size > len(header):
        raise HeaderError("the backing file name lies outside the header")
    raw = header[backing_offset:backing_offset + backing_size]
    try:
        name = raw.decode()
    except UnicodeDecodeError:
        raise HeaderError("the backing file name is not UTF-8") from None
    if "\0" in name or not name:
        raise HeaderError("the backing file name is empty or holds NUL bytes")
    if ":" in name.split("/", 1)[0] and not name.startswith("/"):
        # json:{...}, nbd:..., https://...: network or protocol backings have no file on this host.
        raise HeaderError(f"backing {name!r} is not a local file")
    if ".." in name.split("/"):
        raise UnsafeBacking(f"the backing file name {name!r} climbs with '..': name it without")
    # Relative to the image's directory as the definition names it, which is what qemu opens.
    path = name if name.startswith("/") else posixpath.join(posixpath.dirname(image_path), name)
    return Backing(path=posixpath.normpath(path), format=_backing_format(header, version))


def _backing_format(header: bytes, version: int) -> str:
    if version >= 3 and len(header) >= 104:
        (offset,) = struct.unpack_from(">I", header, 100)
    else:
        offset = _V2_HEADER_LENGTH
    while offset + 8 <= len(header):
        ext_type, length = struct.unpack_from(">II", header, offset)
        if ext_type == _EXT_END:
            return ""
        data = header[offset + 8:offset + 8 + length]
        if ext_type == _EXT_BACKING_FORMAT:
            return data.decode(errors="replace").strip("\0")
        offset += 8 + (length + 7) // 8 * 8
    return ""
