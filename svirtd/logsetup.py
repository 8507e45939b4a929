"""Logging: structured journal fields under systemd, plain stderr otherwise."""

from __future__ import annotations

import logging
import os
import sys

from systemd.journal import JournalHandler


def setup_logging(level: str) -> None:
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(level.upper())
    handler: logging.Handler
    if os.environ.get("INVOCATION_ID") or os.environ.get("JOURNAL_STREAM"):
        # Under systemd: the journal keeps extra={"GUEST_UUID": ...} fields, queryable with
        # `journalctl GUEST_UUID=...`. stderr would only duplicate each line.
        handler = JournalHandler(SYSLOG_IDENTIFIER="svirtd")
    else:
        # MESSAGE_IDs stay out of these lines: they serve journal filters and `journalctl -x`, which
        # never read stderr, and each line already says in words which event it is.
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("svirtd[%(process)d] %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    # libvirtaio logs every poll at DEBUG; keep svirtd's own debug output readable.
    logging.getLogger("virEventAsyncIOImpl").setLevel(logging.INFO)
    logging.getLogger("asyncio").setLevel(logging.INFO)


def guest_fields(uuid: str, name: str, message_id: str = "", **fields: str) -> dict[str, str]:
    """extra= for log calls about a guest: journal fields GUEST_UUID / GUEST_NAME, plus MESSAGE_ID and
    more fields (SVIRT_LEVEL...) when the call is one of message_ids' events."""
    out = {"GUEST_UUID": uuid, "GUEST_NAME": name, **fields}
    if message_id:
        out["MESSAGE_ID"] = message_id
    return out
