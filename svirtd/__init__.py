"""svirtd: per-guest SELinux MCS isolation for KVM guests managed by libvirt."""

__version__ = "0.1.0"
