"""A real etcd cluster on loopback (Debian's etcd-server): N members, free ports, data under a work dir.

Members can be killed (SIGKILL: a crash, or a partitioned host as far as clients can tell) and
started again on the same ports and data; stop() ends every member, pass or fail.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from .process import stop_process

ETCD = "/usr/bin/etcd"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_tls(where: Path) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate (openssl), all in where."""
    where.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=where, check=True, capture_output=True, timeout=60)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=svirt-test-ca",
            "-keyout", "ca-key.pem", "-out", "ca.pem")
    (where / "server.ext").write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n")
    (where / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name in ("server", "client"):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN=svirt-{name}", "-keyout", f"{name}-key.pem",
                "-out", f"{name}.csr")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem", "-CAcreateserial",
                "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.pem")
    return where


class EtcdCluster:
    def __init__(self, workdir: Path, members: int = 3, tls: Path | None = None, one_core: bool = True) -> None:
        """tls: a directory from make_tls(): clients must then speak TLS with a certificate of that CA.
        one_core: each member's Go runtime on one core (GOMAXPROCS=1; tests: three members on a 2-core
        machine shared with others); False: Go's default, every core, as a production member runs."""
        self.workdir = workdir
        self.tls = tls
        self.one_core = one_core
        self.names = [f"m{i}" for i in range(members)]
        self.client_ports = [free_port() for _ in self.names]
        self.peer_ports = [free_port() for _ in self.names]
        self.token = f"svirt-{secrets.token_hex(4)}"
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * members

    @property
    def endpoints(self) -> list[str]:
        scheme = "https" if self.tls else "http"
        return [f"{scheme}://127.0.0.1:{p}" for p in self.client_ports]

    def _argv(self, i: int) -> list[str]:
        initial = ",".join(f"{n}=http://127.0.0.1:{p}" for n, p in zip(self.names, self.peer_ports, strict=True))
        peer = self.peer_ports[i]
        tls = [] if self.tls is None else [
            "--client-cert-auth", "--trusted-ca-file", str(self.tls / "ca.pem"),
            "--cert-file", str(self.tls / "server.pem"), "--key-file", str(self.tls / "server-key.pem")]
        return [ETCD, "--name", self.names[i], "--data-dir", str(self.workdir / self.names[i]), *tls,
                "--listen-client-urls", self.endpoints[i], "--advertise-client-urls", self.endpoints[i],
                "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                "--initial-cluster", initial, "--initial-cluster-token", self.token,
                "--initial-cluster-state", "new", "--logger", "zap", "--log-outputs", "stderr",
                "--log-level", "warn"]

    def start_member(self, i: int) -> None:
        if self.procs[i] is not None and self.procs[i].poll() is None:  # type: ignore[union-attr]
            return
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}
        env.pop("GOMAXPROCS", None)
        if self.one_core:
            env["GOMAXPROCS"] = "1"  # three members on a 2-core machine: no member spreads over both cores
        with (self.workdir / f"{self.names[i]}.log").open("ab") as log:
            self.procs[i] = subprocess.Popen(self._argv(i), stdout=subprocess.DEVNULL, stderr=log, env=env)

    def start(self, timeout: float = 30.0) -> EtcdCluster:
        if not Path(ETCD).exists():
            raise RuntimeError(f"{ETCD} is missing: scripts/install-deps.sh installs etcd-server")
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            for i in range(len(self.names)):
                self.start_member(i)
            self.wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _open(self, i: int, path: str, body: dict[str, Any] | None = None, timeout: float = 2.0) -> Any:
        """GET path (POST body as JSON when given) on member i; the reply, JSON-decoded unless /metrics."""
        context = None
        if self.tls is not None:
            context = ssl.create_default_context(cafile=str(self.tls / "ca.pem"))
            context.load_cert_chain(self.tls / "client.pem", self.tls / "client-key.pem")
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.endpoints[i]}{path}", data,  # noqa: S310 (ours: http or https)
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout, context=context) as reply:  # noqa: S310
            raw = reply.read()
        return raw.decode() if path == "/metrics" else json.loads(raw)

    def healthy(self, i: int) -> bool:
        try:
            return bool(self._open(i, "/health", timeout=1.0).get("health") == "true")
        except (OSError, ValueError):
            return False

    def member_id(self, i: int) -> str:
        return str(self._open(i, "/v3/maintenance/status", {})["header"]["member_id"])

    def leader(self) -> int:
        """The index of the member that leads now."""
        for i, proc in enumerate(self.procs):
            if proc is not None and proc.poll() is None:
                with contextlib.suppress(OSError, ValueError, KeyError):
                    status = self._open(i, "/v3/maintenance/status", {})
                    if status["leader"] == status["header"]["member_id"]:
                        return i
        raise RuntimeError("no etcd member leads now")

    def raft_term(self) -> int:
        """The highest raft term among the members up: it grows by one (at least) with each election."""
        terms = [0]
        for i, proc in enumerate(self.procs):
            if proc is not None and proc.poll() is None:
                with contextlib.suppress(OSError, ValueError, KeyError):
                    terms.append(int(self._open(i, "/v3/maintenance/status", {})["raftTerm"]))
        return max(terms)

    def move_leader(self, to: int, timeout: float = 10.0) -> None:
        """Hand leadership to member `to` (etcd's MoveLeader, asked of the current leader)."""
        target = self.member_id(to)
        deadline = time.monotonic() + timeout
        while (now := self.leader()) != to:
            if time.monotonic() > deadline:
                raise TimeoutError(f"member {self.names[to]} did not become leader within {timeout}s")
            with contextlib.suppress(OSError, ValueError):
                self._open(now, "/v3/maintenance/transfer-leadership", {"targetID": target})
            time.sleep(0.1)

    def txns_served(self, i: int) -> int:
        """Transactions member i answered so far (its gRPC counter; the JSON gateway's go through it)."""
        return sum(int(float(line.rsplit(" ", 1)[1])) for line in self._open(i, "/metrics").splitlines()
                   if line.startswith("grpc_server_handled_total{") and 'grpc_method="Txn"' in line)

    def wait_healthy(self, timeout: float = 30.0, members: list[int] | None = None) -> None:
        wanted = members if members is not None else list(range(len(self.names)))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self.healthy(i) for i in wanted):
                return
            for i in wanted:
                proc = self.procs[i]
                if proc is not None and proc.poll() is not None:
                    log = (self.workdir / f"{self.names[i]}.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"etcd member {self.names[i]} exited with {proc.returncode}: {log}")
            time.sleep(0.1)
        raise TimeoutError(f"etcd members {wanted} not healthy within {timeout}s")

    def kill(self, i: int) -> None:
        proc = self.procs[i]
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        self.procs[i] = None

    def stop(self) -> None:
        for i, proc in enumerate(self.procs):
            stop_process(proc, 5)
            self.procs[i] = None
