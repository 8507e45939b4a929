"""Domain errors raised by the core and the use-cases.

Each one maps to exactly one D-Bus error name (see dbus_errors.ERROR_NAMES); the message is written
for the admin who will read it in `busctl` or `virsh` output, so it says what to do next.
"""

import errno


class SvirtError(Exception):
    """Base class of every error svirtd reports to a caller."""

    # Set once the error is in the journal and the audit trail (a refused isolation): a caller that
    # catches it only to log it stays quiet, so that one failure is one message.
    reported: bool = False


class InvalidArgument(SvirtError):
    """A caller passed a value that can never be valid (malformed UUID, unknown profile...)."""


class NoSuchGuest(SvirtError):
    """The guest is not known (to libvirt, or to svirtd's table)."""


class LabelSpaceExhausted(SvirtError):
    """Every category pair of the configured range is in use."""


class ResourceConflict(SvirtError):
    """A private resource of the guest is already owned by another guest."""


class UnsafePath(SvirtError):
    """A resource path is refused: symlink, system tree, device node, '..' trick..."""


class Unlabelable(SvirtError):
    """A resource lives on storage that cannot carry SELinux labels and config refuses that."""


class NotConfined(SvirtError):
    """A guest would start without svirtd's confinement and require_confined forbids that."""


class LibvirtUnavailable(SvirtError):
    """libvirtd cannot be reached right now."""


class AccessDenied(SvirtError):
    """The caller is not allowed to perform this operation."""


class RelabelFailed(SvirtError):
    """Relabeling failed part-way (everything already changed was rolled back), or a release could not
    restore everything (the guest keeps its pair until it can; the message says what failed)."""


class Cancelled(RelabelFailed):
    """The caller cancelled the job (svirtctl's Ctrl-C, Job1.Cancel): what it had labeled was rolled back."""


# What storage answers when it fails rather than hangs: work that meets one refuses the guest with
# StorageFailed (never an internal error, never half a guest).
FAILING_STORAGE_ERRNOS = frozenset({errno.EIO, errno.ENXIO, errno.ESTALE, errno.ENOTCONN, errno.EREMOTEIO,
                                    errno.EBADMSG, errno.EUCLEAN})


class StorageFailed(SvirtError):
    """The storage a guest's files lie on answered with an error (EIO: a failing disk, a broken network
    mount): the guest is refused and nothing of it is labeled."""


class StateNotWritable(SvirtError):
    """svirtd could not record a change in its state database (its disk is full, or failing): the change
    was not made. It goes through once the state directory can be written again, without a restart."""


class StorageNotResponding(SvirtError):
    """The storage a guest's files lie on does not answer (a dead NFS server, a stopped FUSE daemon)."""


class ConfigError(SvirtError):
    """The configuration file is invalid."""


class ClusterUnavailable(SvirtError):
    """The cluster's allocation table (etcd) cannot be reached or has no quorum: a new pair cannot be
    bound safely, so none is handed out (guests whose pair is known here still start)."""
