"""How the libvirt hook hands a domain definition to svirtd: a file in a root-only spool directory.

A command-line argument caps the XML at 128 KiB (Linux's MAX_ARG_STRLEN): a guest with a few hundred
disks would make the hook fail with "Argument list too long" and start unconfined, or never start
with require_confined. dbus-send cannot pass a file descriptor, so the hook writes the XML into
<runtime dir>/hook/guest-NAME.xml (0700, root; one file per guest, overwritten at each of its
phases and removed at its `release end`, so a start runs no rm) and passes the file's name; svirtd
accepts only a regular file directly inside that directory, owned by root, not a symlink, within the
size limit, and never removes it. For `migrate begin` and `restore begin` svirtd writes the
definition libvirt is to use next to it (NAME.out), which the hook prints.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .errors import InvalidArgument
from .xml_limits import MAX_XML_BYTES


def spool_dir(hook_env_file: str) -> Path | None:
    return Path(hook_env_file).parent / "hook" if hook_env_file else None


def prepare(directory: Path) -> None:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory.chmod(0o700)


def read_spooled(directory: Path | None, name: str) -> str:
    """The XML the hook spooled; InvalidArgument for anything but a file of the hook's in `directory`."""
    if directory is None:
        raise InvalidArgument("svirtd runs without a hook spool directory (hook_env_file is empty)")
    path = Path(name)
    if not path.is_absolute() or path.parent != directory or path.name.startswith(".") or path.suffix != ".xml":
        raise InvalidArgument(f"{name!r} is not a file of svirtd's hook spool directory {directory}")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise InvalidArgument(f"cannot read the spooled definition {name}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_uid != 0 or st.st_nlink != 1:
            raise InvalidArgument(f"{name} is not a regular file written by root: refused")
        if st.st_size > MAX_XML_BYTES:
            raise InvalidArgument(f"{name} holds {st.st_size} bytes, more than a definition may ({MAX_XML_BYTES})")
        data = fh.read(MAX_XML_BYTES + 1)
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise InvalidArgument(f"{name} is not UTF-8 text") from None


def write_rewritten(spooled: str, xml: str) -> None:
    """The definition libvirt is to use instead (migrate/restore), next to the spooled one."""
    out = Path(spooled + ".out")
    tmp = out.with_name(out.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(xml)
    os.replace(tmp, out)
