"""The storage gate's requests to its helper never fill the pipe (pure part)."""

from __future__ import annotations

from svirtd.storage_gate import CHUNK_BYTES, _chunks


def test_requests_are_cut_to_fit_half_a_pipe() -> None:
    paths = [f"/var/lib/libvirt/images/guest-{i:05d}/" + "d" * 200 + "/disk.img" for i in range(2000)]
    chunks = _chunks(paths)
    assert len(chunks) > 1 and all(len(c) <= CHUNK_BYTES and c.endswith(b"\n") for c in chunks)
    assert [p for c in chunks for p in c[:-1].decode().split("\0")] == paths
    assert _chunks([]) == []
