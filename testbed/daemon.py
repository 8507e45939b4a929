"""svirtd as a real subprocess: its own config and state dir, readiness via a real sd_notify socket."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SVIRTD = Path(sys.executable).parent / "svirtd"


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):  # an inline table, e.g. cluster = {backend = "etcd", ...}
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


class SvirtdProcess:
    """svirtd confining the guests of one libvirtd (its URI), serving on one bus; the hook of that
    libvirtd finds it through hook_env_file."""

    def __init__(self, workdir: Path, bus_address: str, libvirt_uri: str, hook_env_file: str | Path,
                 **config: object) -> None:
        self.workdir = workdir
        self.state_dir = workdir / "state"
        self.config_path = workdir / "svirtd.conf"
        self.log_path = workdir / "svirtd.log"
        self.bus_address = bus_address
        self.config: dict[str, object] = {"state_dir": str(self.state_dir), "bus_address": bus_address,
                                          "libvirt_uri": libvirt_uri, "log_level": "debug",
                                          "setrans_file": str(workdir / "setrans.conf"),
                                          "hook_env_file": str(hook_env_file), **config}
        self.proc: subprocess.Popen[bytes] | None = None
        self.notifications: list[str] = []
        self._notify: socket.socket | None = None

    def write_config(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text("".join(f"{k} = {toml_value(v)}\n" for k, v in self.config.items()))

    def start(self, timeout: float = 20.0, env: dict[str, str] | None = None,
              wrapper: Sequence[str] = ()) -> SvirtdProcess:
        """wrapper: a command line svirtd's runs under (it must exec it: the pid stays svirtd's)."""
        self.write_config()
        notify_path = self.workdir / "notify.sock"
        notify_path.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(notify_path))
        sock.settimeout(0.1)
        self._close_notify()
        self._notify = sock
        self.notifications = []  # this start's own: a READY=1 of the last start says nothing about this one
        full_env = {k: v for k, v in os.environ.items() if k not in ("INVOCATION_ID", "JOURNAL_STREAM")}
        full_env.update({"NOTIFY_SOCKET": str(notify_path), **(env or {})})
        self.proc = subprocess.Popen([*wrapper, str(SVIRTD), "--config", str(self.config_path)], env=full_env,
                                     stdout=subprocess.DEVNULL, stderr=self.log_path.open("ab"))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"svirtd exited with {self.proc.returncode}:\n{self.log_tail()}")
            if "READY=1" in self.drain_notifications(0.1):
                return self
        raise TimeoutError(f"svirtd sent no READY=1 within {timeout}s:\n{self.log_tail()}")

    def drain_notifications(self, wait: float = 0.0) -> list[str]:
        """Read what svirtd sent to its NOTIFY_SOCKET so far; returns every line received in total."""
        if self._notify is not None:
            self._notify.settimeout(wait or 0.001)
            while True:
                try:
                    self.notifications += self._notify.recv(4096).decode().split("\n")
                except (TimeoutError, BlockingIOError):
                    break
                self._notify.settimeout(0.001)
        return self.notifications

    def _close_notify(self) -> None:
        if self._notify is not None:
            self._notify.close()
            self._notify = None

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code = self.proc.returncode
        self.proc = None
        self.drain_notifications()
        self._close_notify()
        return code

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
        self._close_notify()


def unwrap_busctl(value: Any) -> Any:
    """busctl --json=short output -> plain values (variants unwrapped)."""
    if isinstance(value, dict) and set(value) == {"type", "data"}:
        return unwrap_busctl(value["data"])
    if isinstance(value, dict):
        return {k: unwrap_busctl(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap_busctl(v) for v in value]
    return value


def busctl(address: str, *args: str, user: int | None = None, check: bool = True,
           timeout: float = 30) -> subprocess.CompletedProcess[str]:
    cmd = ["busctl", f"--address={address}", *args]
    if user is not None:
        cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=timeout)


def call_json(address: str, member: str, signature: str = "", *args: str, user: int | None = None) -> Any:
    """Call org.svirt.Manager1.<member> with busctl and return the unwrapped reply body."""
    out = busctl(address, "--json=short", "call", "org.svirt.Manager", "/org/svirt/Manager",
                 "org.svirt.Manager1", member, *([signature, *args] if signature else []), user=user)
    data = json.loads(out.stdout)["data"]
    return unwrap_busctl(data)
