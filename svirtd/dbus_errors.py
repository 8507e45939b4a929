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
    errors.RelabelFailed: ERROR_PREFIX + "RelabelFailed",
    errors.StorageNotResponding: ERROR_PREFIX + "StorageNotResponding",
    errors.StateNotWritable: ERROR_PREFIX + "StateNotWritable",
    errors.StorageFailed: ERROR_PREFIX + "StorageFailed",
    errors.ClusterUnavailable: ERROR_PREFIX + "ClusterUnavailable",
    errors.AccessDenied: "org.freedesktop.DBus.Error.AccessDenied",
}
INTERNAL_ERROR = ERROR_PREFIX + "Failed"

P = ParamSpec("P")
R = TypeVar("R")


def dbus_errors(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Map domain errors to D-Bus errors; anything unexpected is logged and reported generically."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except errors.SvirtError as exc:
            name = next((n for cls, n in ERROR_NAMES.items() if isinstance(exc, cls)), INTERNAL_ERROR)
            raise DBusError(name, str(exc)) from None
        except DBusError:
            raise
        except Exception:
            log.exception("%s failed", fn.__name__)
            raise DBusError(INTERNAL_ERROR, f"{fn.__name__} failed on an internal error; see "
                                            "`journalctl -u svirtd` for details") from None

    return wrapper
