"""Run svirtd with tracemalloc on, for `bench/load.py --only memory --trace N`: the wrapper is given svirtd's
command line and runs it in this same process (the pid stays svirtd's). On SIGUSR2 it writes a snapshot to
tracemalloc.dump next to svirtd's config (then an empty tracemalloc.done), which load.py reads."""

from __future__ import annotations

import runpy
import signal
import sys
import tracemalloc
from pathlib import Path
from types import FrameType


def dump(config: Path) -> None:
    target = config.with_name("tracemalloc.dump")
    tracemalloc.take_snapshot().dump(str(target))
    target.with_suffix(".done").touch()


def main() -> None:
    script, *args = sys.argv[1:]
    config = Path(args[args.index("--config") + 1])

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        dump(config)

    tracemalloc.start(1)
    signal.signal(signal.SIGUSR2, on_signal)
    sys.argv = [script, *args]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
