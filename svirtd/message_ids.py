"""The journal MESSAGE_IDs of svirtd's events.

Fixed forever: admins filter on them (`journalctl MESSAGE_ID=...`) and data/svirtd.catalog explains
each one (`journalctl -x`). A new event gets a new id (`journalctl --new-id128`) and a catalog entry;
an id is never reused for another meaning.
"""

from __future__ import annotations

from typing import Final

GUEST_ISOLATED: Final = "046cfcb344e54d77a25ce51399fdc049"
GUEST_RELEASED: Final = "e6a0f188b05f48b8ab4b35b5e2547f26"
ISOLATION_FAILED: Final = "65238c665abf487c9080f16ed44f9d0e"
GUEST_UNCONFINED: Final = "601c13cd22364a27b7129b8785ce7cbd"
DENIAL_CROSS_GUEST: Final = "2ac25ca5ca0e4907ac2939b4164d901c"
DENIAL_GUEST: Final = "520221f814d749679aa77ee4aecbdddd"
DENIAL_UNATTRIBUTED: Final = "695bf289abbc47e884d27535ae9a0778"
LABEL_SPACE_EXHAUSTED: Final = "4efcebb075f84160bcdf7882e8bf37c5"
STORAGE_NOT_RESPONDING: Final = "63a580808b104ed5b6f1b9b4172a5511"
DAEMON_READY: Final = "555c0d6510354641ac70bf3e6ca6f2c2"
CONFIG_RELOADED: Final = "b89e7438c6bd49808a1e67d26cd133ac"
LABEL_DRIFT_REPAIRED: Final = "0bc9f33c648c4fa784d657a69eec2d4f"

ALL: Final[dict[str, str]] = {
    "GUEST_ISOLATED": GUEST_ISOLATED,
    "GUEST_RELEASED": GUEST_RELEASED,
    "ISOLATION_FAILED": ISOLATION_FAILED,
    "GUEST_UNCONFINED": GUEST_UNCONFINED,
    "DENIAL_CROSS_GUEST": DENIAL_CROSS_GUEST,
    "DENIAL_GUEST": DENIAL_GUEST,
    "DENIAL_UNATTRIBUTED": DENIAL_UNATTRIBUTED,
    "LABEL_SPACE_EXHAUSTED": LABEL_SPACE_EXHAUSTED,
    "STORAGE_NOT_RESPONDING": STORAGE_NOT_RESPONDING,
    "DAEMON_READY": DAEMON_READY,
    "CONFIG_RELOADED": CONFIG_RELOADED,
    "LABEL_DRIFT_REPAIRED": LABEL_DRIFT_REPAIRED,
}


def message_fields(message_id: str, **fields: str) -> dict[str, str]:
    """extra= for a log call that is one of these events (journal fields MESSAGE_ID plus the given ones)."""
    return {"MESSAGE_ID": message_id, **fields}
