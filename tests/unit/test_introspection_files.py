"""The introspection XML installed for tools (data/interfaces) is what svirtd serves."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_installed_introspection_matches_the_code() -> None:
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "gen-introspection.py"), "--check"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    for name in ("org.svirt.Manager1.xml", "org.svirt.Guest1.xml", "org.svirt.Job1.xml"):
        text = (REPO / "data" / "interfaces" / name).read_text()
        assert "org.freedesktop.DBus.Property.EmitsChangedSignal" in text
        assert "org.freedesktop.DBus.Description" in text
