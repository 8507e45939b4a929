"""The edge to etcd: its v3 JSON gateway (/v3/kv/txn, /v3/watch, /v3/lease/...) over HTTP/1.1 on asyncio
streams, TLS when configured. No third-party client: a request is a few hundred bytes of JSON.

Every request has a deadline and goes to the endpoint that answered last, then to the others; when none
answers in time the caller gets EtcdUnavailable (a partition, a lost quorum: a member without a leader
does not answer a linearizable request). Nothing here blocks the event loop. Deadlines are
asyncio.timeout() scopes, never asyncio.wait_for(): on Python 3.11 cancelling a wait_for() around a read
of a TLS stream can leave the task waiting forever (seen here: 17 of 80 cancelled watches).
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .cluster_model import Compare, Delete, KeyValue, Op, Put, Txn, TxnResult

# gRPC codes that mean "the cluster cannot answer now" (Unavailable, DeadlineExceeded, Aborted).
_UNAVAILABLE_CODES = {4, 10, 14}
_MAX_HEADER = 64 * 1024


class EtcdUnavailable(Exception):
    """No endpoint answered in time (down, partitioned, or without quorum)."""


class EtcdError(Exception):
    """etcd answered with an error."""


class EtcdCompacted(EtcdError):
    """A watch asked for a revision etcd has compacted away: re-read everything."""


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _unb64(data: str) -> str:
    return base64.b64decode(data).decode("utf-8", errors="replace")


def _kv(raw: dict[str, Any]) -> KeyValue:
    return KeyValue(key=_unb64(raw.get("key", "")), value=_unb64(raw.get("value", "")),
                    create_revision=int(raw.get("create_revision", 0)), mod_revision=int(raw.get("mod_revision", 0)),
                    lease=int(raw.get("lease", 0)))


def _encode_range_end(end: str) -> str:
    # prefix_end() spells a byte string in latin-1 (its last byte plus one may not be valid UTF-8)
    return base64.b64encode(end.encode("latin-1")).decode()


def _op(op: Op) -> dict[str, Any]:
    if isinstance(op, Put):
        body: dict[str, Any] = {"key": _b64(op.key), "value": _b64(op.value)}
        if op.lease:
            body["lease"] = str(op.lease)
        return {"request_put": body}
    if isinstance(op, Delete):
        return {"request_delete_range": {"key": _b64(op.key),
                                         **({"range_end": _encode_range_end(op.range_end)} if op.range_end else {})}}
    return {"request_range": {"key": _b64(op.key),
                              **({"range_end": _encode_range_end(op.range_end)} if op.range_end else {})}}


def _compare(c: Compare) -> dict[str, Any]:
    body: dict[str, Any] = {"key": _b64(c.key), "target": c.target, "result": c.result}
    if c.target == "CREATE":
        body["create_revision"] = str(c.value)
    elif c.target == "MOD":
        body["mod_revision"] = str(c.value)
    else:
        body["value"] = _b64(str(c.value))
    return body


def txn_body(txn: Txn) -> dict[str, Any]:
    """The gateway's JSON for a transaction (bench/cluster.py sends the same body from a plain client)."""
    return {"compare": [_compare(c) for c in txn.compare], "success": [_op(o) for o in txn.success],
            "failure": [_op(o) for o in txn.failure]}


@dataclass(frozen=True)
class WatchEvent:
    kind: str  # "PUT" | "DELETE"
    kv: KeyValue


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    def close(self) -> None:
        self.writer.close()


class EtcdClient:
    def __init__(self, endpoints: tuple[str, ...], timeout: float = 1.0, ca_file: str = "", cert_file: str = "",
                 key_file: str = "") -> None:
        self.endpoints = endpoints
        self.timeout = timeout
        self._ssl: ssl.SSLContext | None = None
        if any(e.startswith("https://") for e in endpoints):
            self._ssl = ssl.create_default_context(cafile=ca_file or None)
            if cert_file:
                self._ssl.load_cert_chain(cert_file, key_file or None)
        self._preferred = 0
        self._idle: dict[str, list[_Conn]] = {e: [] for e in endpoints}

    async def close(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
            conns.clear()

    # -- the API --------------------------------------------------------------------------------

    async def range(self, key: str, range_end: str = "", keys_only: bool = False) -> tuple[list[KeyValue], int]:
        body: dict[str, Any] = {"key": _b64(key)}
        if range_end:
            body["range_end"] = _encode_range_end(range_end)
        if keys_only:
            body["keys_only"] = True
        reply = await self.call("/v3/kv/range", body)
        return [_kv(kv) for kv in reply.get("kvs", ())], int(reply["header"]["revision"])

    async def txn(self, txn: Txn) -> TxnResult:
        reply = await self.call("/v3/kv/txn", txn_body(txn))
        ranges = tuple(tuple(_kv(kv) for kv in r["response_range"].get("kvs", ()))
                       for r in reply.get("responses", ()) if "response_range" in r)
        return TxnResult(succeeded=bool(reply.get("succeeded", False)), revision=int(reply["header"]["revision"]),
                         ranges=ranges)

    async def put(self, key: str, value: str, lease: int = 0) -> None:
        body = {"key": _b64(key), "value": _b64(value), **({"lease": str(lease)} if lease else {})}
        await self.call("/v3/kv/put", body)

    async def lease_grant(self, ttl: int) -> int:
        reply = await self.call("/v3/lease/grant", {"TTL": str(ttl)})
        return int(reply["ID"])

    async def lease_keepalive(self, lease: int) -> int:
        """The lease's remaining TTL after the refresh; 0 when it is gone (expired or revoked)."""
        reply = await self.call("/v3/lease/keepalive", {"ID": str(lease)})
        return int(reply.get("result", reply).get("TTL", 0))

    async def lease_revoke(self, lease: int) -> None:
        await self.call("/v3/lease/revoke", {"ID": str(lease)})

    async def prefer_leader(self) -> str:
        """Send requests to the raft leader's member first; its endpoint, or "" when none said it leads
        (then the order stays). A write sent to a follower travels on to the leader and is answered only
        once the follower applied it too: more hops between processes per allocation, and on a busy host
        each hop may wait for a CPU. The leader can move: ClusterBook asks again at every lease renewal,
        one request while it stays; the others are asked together, so this waits two timeouts at most."""
        if await self._leads(self._preferred):
            return self.endpoints[self._preferred]
        others = [i for i in range(len(self.endpoints)) if i != self._preferred]
        for i, leads in zip(others, await asyncio.gather(*(self._leads(i) for i in others)), strict=True):
            if leads:
                self._preferred = i
                return self.endpoints[i]
        return ""

    async def _leads(self, i: int) -> bool:
        try:
            async with asyncio.timeout(self.timeout):
                status = await self._request(self.endpoints[i], "/v3/maintenance/status", {})
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError, EtcdUnavailable, EtcdError):
            return False  # this member cannot say; the requests themselves still fail over
        leader = str(status.get("leader", ""))
        return bool(leader) and leader == str(status.get("header", {}).get("member_id", ""))

    async def watch(self, key: str, range_end: str, start_revision: int) -> AsyncIterator[list[WatchEvent]]:
        """Events under [key, range_end) from start_revision on, batch by batch, until the stream breaks
        (EtcdUnavailable) or etcd compacted that revision (EtcdCompacted). Its own connection."""
        endpoint = self.endpoints[self._preferred]
        body = {"create_request": {"key": _b64(key), "range_end": _encode_range_end(range_end),
                                   "start_revision": str(start_revision)}}
        try:
            async with asyncio.timeout(self.timeout):
                conn = await self._connect(endpoint)
        except (OSError, TimeoutError) as exc:
            raise EtcdUnavailable(f"{endpoint}: {exc or type(exc).__name__}") from None
        try:
            await self._send(conn, endpoint, "/v3/watch", body)
            async with asyncio.timeout(self.timeout):
                status, headers = await self._head(conn)
            if status != 200:
                raise EtcdUnavailable(f"{endpoint}: watch answered HTTP {status}")
            buffer = b""
            async for chunk in self._chunks(conn, headers):
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        batch = self._watch_message(json.loads(line))
                        if batch:
                            yield batch
            raise EtcdUnavailable(f"{endpoint}: the watch stream ended")
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            raise EtcdUnavailable(f"{endpoint}: watch: {exc or type(exc).__name__}") from None
        finally:
            conn.close()

    @staticmethod
    def _watch_message(message: dict[str, Any]) -> list[WatchEvent]:
        if "error" in message:
            raise EtcdUnavailable(f"watch: {message['error'].get('message', message['error'])}")
        result = message.get("result", {})
        if result.get("compact_revision") and int(result["compact_revision"]) > 0:
            raise EtcdCompacted(f"revision compacted (now {result['compact_revision']})")
        if result.get("canceled"):
            raise EtcdUnavailable(f"watch canceled: {result.get('cancel_reason', '')}")
        return [WatchEvent(kind=e.get("type", "PUT"), kv=_kv(e["kv"])) for e in result.get("events", ())]

    # -- transport ------------------------------------------------------------------------------

    async def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST body to path on the preferred endpoint, then on the others, pass after pass for up to three
        request timeouts (a leader election after a member died takes about a second); the reply's JSON."""
        problems: list[str] = []
        n = len(self.endpoints)
        deadline = time.monotonic() + 3 * self.timeout
        while True:
            problems.clear()
            for step in range(n):
                i = (self._preferred + step) % n
                endpoint = self.endpoints[i]
                try:
                    async with asyncio.timeout(self.timeout):
                        reply = await self._request(endpoint, path, body)
                except TimeoutError:
                    problems.append(f"{endpoint}: no answer within {self.timeout:g} s")
                    continue
                except (OSError, asyncio.IncompleteReadError, ValueError, EtcdUnavailable) as exc:
                    problems.append(f"{endpoint}: {exc or type(exc).__name__}")
                    continue
                self._preferred = i
                return reply
            if time.monotonic() + 0.1 >= deadline:
                raise EtcdUnavailable("; ".join(problems))
            await asyncio.sleep(0.1)

    async def _request(self, endpoint: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        idle = self._idle[endpoint]
        while idle:  # a kept-alive connection the member closed meanwhile (restarted, idle timeout): next one
            conn = idle.pop()
            try:
                return await self._exchange(conn, endpoint, path, body)
            except (asyncio.IncompleteReadError, ConnectionError):
                continue
        try:
            return await self._exchange(await self._connect(endpoint), endpoint, path, body)
        except asyncio.IncompleteReadError:
            raise EtcdUnavailable("the connection was closed") from None

    async def _exchange(self, conn: _Conn, endpoint: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        idle = self._idle[endpoint]
        try:
            await self._send(conn, endpoint, path, body)
            status, headers = await self._head(conn)
            data = b"".join([chunk async for chunk in self._chunks(conn, headers)])
        except BaseException:
            conn.close()
            raise
        if headers.get("connection", "").lower() == "close":
            conn.close()
        else:
            idle.append(conn)
        text = data.split(b"\n", 1)[0] if path.endswith("keepalive") else data
        reply: dict[str, Any] = json.loads(text or b"{}")
        if status != 200 or ("error" in reply and "result" not in reply):
            error = reply.get("error", reply)
            message = error.get("message", error) if isinstance(error, dict) else error
            code = int(reply.get("code") or (error.get("code") if isinstance(error, dict) else 0) or 0)
            if code in _UNAVAILABLE_CODES or status in (502, 503, 504):
                raise EtcdUnavailable(str(message))  # call() names the endpoint
            raise EtcdError(f"{endpoint}{path}: {message}")
        return reply

    async def _connect(self, endpoint: str) -> _Conn:
        url = urlsplit(endpoint)
        reader, writer = await asyncio.open_connection(url.hostname, url.port or (443 if self._ssl else 80),
                                                       ssl=self._ssl if url.scheme == "https" else None,
                                                       limit=_MAX_HEADER)
        return _Conn(reader, writer)

    @staticmethod
    async def _send(conn: _Conn, endpoint: str, path: str, body: dict[str, Any]) -> None:
        payload = json.dumps(body, separators=(",", ":")).encode()
        host = urlsplit(endpoint).netloc
        # hasleader (gRPC metadata, through the gateway): a member cut off from its leader answers "no leader"
        # at once and ends its watches, instead of serving a stale view or waiting for its own timeout.
        conn.writer.write(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                          f"Grpc-Metadata-Hasleader: true\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
                          + payload)
        await conn.writer.drain()

    @staticmethod
    async def _head(conn: _Conn) -> tuple[int, dict[str, str]]:
        raw = await conn.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        return status, headers

    @staticmethod
    async def _chunks(conn: _Conn, headers: dict[str, str]) -> AsyncIterator[bytes]:
        if headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int((await conn.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:  # then trailers (the gateway sends Grpc-Trailer-*), up to an empty line
                    while await conn.reader.readuntil(b"\r\n") != b"\r\n":
                        pass
                    return
                chunk = await conn.reader.readexactly(size)
                await conn.reader.readexactly(2)
                yield chunk
        else:
            length = int(headers.get("content-length", "0"))
            if length:
                yield await conn.reader.readexactly(length)

