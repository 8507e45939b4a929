"""svirtctl's exit status: one code per kind of failure, so scripts can tell them apart.

The numbers follow systemctl and the LSB where a meaning exists there (1 generic, 2 usage, 3 "not
as it should be", 4 no such unit, 7 program not running); the rest are svirtd's own. This table is
the only place they are defined; man/svirtctl.1.scd documents it.
"""

from __future__ import annotations

import enum

_SVIRT = "org.svirt.Manager1.Error."
_DBUS = "org.freedesktop.DBus.Error."


class ExitCode(enum.IntEnum):
    OK = 0
    FAILURE = 1  # anything not listed below, including svirtd's internal errors
    USAGE = 2  # bad command line (argparse) or an argument svirtd rejects as never valid
    VIOLATED = 3  # verify: isolation does not hold
    NO_SUCH_GUEST = 4
    ACCESS_DENIED = 5  # polkit or the bus policy refused the call
    LABEL_SPACE_FULL = 6
    NOT_RUNNING = 7  # svirtd not running, or the bus not reachable
    CONFLICT = 8  # a private resource is already another guest's
    UNSAFE_PATH = 9
    UNLABELABLE = 10
    NOT_CONFINED = 11
    LIBVIRT_UNAVAILABLE = 12
    RELABEL_FAILED = 13
    STORAGE_NOT_RESPONDING = 14
    CLUSTER_UNAVAILABLE = 15  # etcd unreachable or without quorum: new pairs are refused
    CANCELLED = 16  # the job was cancelled (Ctrl-C, or Job1.Cancel by somebody else); rolled back
    TIMEOUT = 17  # svirtd did not answer a call within --timeout (a job's own length never counts)
    STATE_NOT_WRITABLE = 18  # svirtd's state directory is full or failing: the change was not made
    STORAGE_FAILED = 19  # a guest's storage answered with an I/O error: the guest was refused


# D-Bus error name -> exit code. svirtd's names are dbus_errors.ERROR_NAMES; the rest come from the bus.
ERROR_EXIT: dict[str, ExitCode] = {
    _SVIRT + "InvalidArgument": ExitCode.USAGE,
    _SVIRT + "NoSuchGuest": ExitCode.NO_SUCH_GUEST,
    _SVIRT + "LabelSpaceExhausted": ExitCode.LABEL_SPACE_FULL,
    _SVIRT + "ResourceConflict": ExitCode.CONFLICT,
    _SVIRT + "UnsafePath": ExitCode.UNSAFE_PATH,
    _SVIRT + "Unlabelable": ExitCode.UNLABELABLE,
    _SVIRT + "NotConfined": ExitCode.NOT_CONFINED,
    _SVIRT + "LibvirtUnavailable": ExitCode.LIBVIRT_UNAVAILABLE,
    _SVIRT + "RelabelFailed": ExitCode.RELABEL_FAILED,
    _SVIRT + "StorageNotResponding": ExitCode.STORAGE_NOT_RESPONDING,
    _SVIRT + "ClusterUnavailable": ExitCode.CLUSTER_UNAVAILABLE,
    _SVIRT + "Cancelled": ExitCode.CANCELLED,
    _DBUS + "Timeout": ExitCode.TIMEOUT,
    _DBUS + "NoReply": ExitCode.TIMEOUT,
    _SVIRT + "StateNotWritable": ExitCode.STATE_NOT_WRITABLE,
    _SVIRT + "StorageFailed": ExitCode.STORAGE_FAILED,
    _DBUS + "AccessDenied": ExitCode.ACCESS_DENIED,  # svirtd's refusals and the bus policy's alike
    _DBUS + "InteractiveAuthorizationRequired": ExitCode.ACCESS_DENIED,
    _DBUS + "ServiceUnknown": ExitCode.NOT_RUNNING,  # nobody owns org.svirt.Manager
    _DBUS + "NameHasNoOwner": ExitCode.NOT_RUNNING,
    _DBUS + "Disconnected": ExitCode.NOT_RUNNING,
}


def exit_code(error_name: str) -> ExitCode:
    """The exit code for a D-Bus error svirtctl received."""
    return ERROR_EXIT.get(error_name, ExitCode.FAILURE)
