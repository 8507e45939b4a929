"""Domain errors -> D-Bus error names, for every object svirtd serves (Manager1 and Guest1), the way
firewalld's exception decorator does it: one table, one decorator."""

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

from dbus_fast import DBusError

from . import errors

log = logging.getLogger(__name__)

ERROR_PREFIX = "org.svirt.Manager1.Error."
ERROR_NAMES: dict[type[errors.SvirtError], str] = {
    errors.InvalidArgument: ERROR_PREFIX + "InvalidArgument",
    errors.NoSuchGuest: ERROR_PREFIX + "NoSuchGuest",
    errors.LabelSpaceExhausted: ERROR_PREFIX + "LabelSpaceExhausted",
    errors.ResourceConflict: ERROR_PREFIX + "ResourceConflict",
    errors.UnsafePath: ERROR_PREFIX + "UnsafePath",
    errors.Unlabelable: ERROR_PREFIX + "Unlabelable",
    errors.LibvirtUnavailable: ERROR_PREFIX + "LibvirtUnavailable",
    errors.NotConfined: ERROR_PREFIX + "NotConfined",
    errors.Cancelled: ERROR_PREFIX + "Cancelled",  # before RelabelFailed: the first match wins
    errors.RelabelFailed: ERROR_PREFIX + "RelabelFailed",
    errors.StorageNotResponding: ERROR_PREFIX + "StorageNotResponding",
    errors.StateNotWritable: ERROR_PREFIX + "StateNotWritable",
    errors.StorageFailed: ERROR_PREFIX + "StorageFailed",
    errors.ClusterUnavailable: ERROR_PREFIX + "ClusterUnavailable",
    errors.AccessDenied: "org.freedesktop.DBus.Error.AccessDenied",
}
INTERNAL_ERROR = ERROR_PREFIX + "Failed"
# An error message quotes what the caller passed: never more of it than this (a caller's 8 MiB
# argument must not come back as an 8 MiB error).
MAX_ERROR_TEXT = 1024

P = ParamSpec("P")
R = TypeVar("R")


def bounded(text: str) -> str:
    """The message, or its head and tail when it is longer than MAX_ERROR_TEXT."""
    if len(text) <= MAX_ERROR_TEXT:
        return text
    cut = len(text) - MAX_ERROR_TEXT
    return f"{text[:MAX_ERROR_TEXT // 2]}...[{cut} characters cut]...{text[-MAX_ERROR_TEXT // 2:]}"


def error_name(exc: BaseException) -> tuple[str, str]:
    """The D-Bus error name and (bounded) message a failure is reported with (also in a job's JobRemoved)."""
    if isinstance(exc, errors.SvirtError):
        name = next((n for cls, n in ERROR_NAMES.items() if isinstance(exc, cls)), INTERNAL_ERROR)
        return name, bounded(str(exc))
    if isinstance(exc, DBusError):
        return exc.type, bounded(exc.text)
    return INTERNAL_ERROR, "failed on an internal error; see `journalctl -u svirtd` for details"


def dbus_errors(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Map domain errors to D-Bus errors; anything unexpected is logged and reported generically."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except errors.SvirtError as exc:
            raise DBusError(*error_name(exc)) from None
        except DBusError:
            raise
        except Exception:
            log.exception("%s failed", fn.__name__)
            raise DBusError(INTERNAL_ERROR, f"{fn.__name__} failed on an internal error; see "
                                            "`journalctl -u svirtd` for details") from None

    return wrapper
