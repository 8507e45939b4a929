"""Drive data/completion/svirtctl.bash the way bash does on <Tab>: the line so far, then COMPREPLY."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

COMPLETION = Path(__file__).resolve().parents[1] / "data" / "completion" / "svirtctl.bash"
# COMP_WORDS as readline fills it for these tests' lines (no ':' or '=' in the word completed).
DRIVER = """
source "$1"
COMP_LINE=$2; COMP_POINT=${#COMP_LINE}
read -ra COMP_WORDS <<< "$COMP_LINE"; [[ $COMP_LINE == *" " ]] && COMP_WORDS+=("")
COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
complete -p svirtctl >/dev/null || exit 3
_svirtctl
printf '%s\\n' "${COMPREPLY[@]}"
"""


def complete(line: str, env: dict[str, str] | None = None) -> list[str]:
    """What <Tab> offers at the end of `line`."""
    path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"  # this venv's svirtctl
    out = subprocess.run(["bash", "--norc", "--noprofile", "-c", DRIVER, "bash", str(COMPLETION), line],
                         capture_output=True, text=True, timeout=30, env={**os.environ, "PATH": path, **(env or {})})
    assert out.returncode == 0, out.stderr
    return [w for w in out.stdout.splitlines() if w]
