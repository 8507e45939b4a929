"""Run a command as a child subreaper: reap every orphan promptly, forward SIGTERM/SIGINT.

PID 1 on the CI machines reaps zombies slowly, which makes `virsh destroy` take ~1.5 s; running
libvirtd under this makes it ~0.2 s. Usage: python -m testbed.subreaper CMD ARGS...
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_CHILD_SUBREAPER = 36


def main() -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        print("subreaper: prctl failed", file=sys.stderr)
        return 1
    pid = os.fork()
    if pid == 0:
        os.execvp(sys.argv[1], sys.argv[1:])
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda s, _f: os.kill(pid, s))
    status = 0
    while True:
        try:
            child, st = os.wait()
        except ChildProcessError:
            return status
        except InterruptedError:
            continue
        if child == pid:
            status = os.waitstatus_to_exitcode(st)


if __name__ == "__main__":
    sys.exit(main())
