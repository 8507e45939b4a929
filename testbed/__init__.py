"""Real parts for tests and the demo: a private system-like bus, libvirtd, cheap TCG guests, svirtd.

Each helper tears down only what it started itself.
"""
