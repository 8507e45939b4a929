"""Who may call what: polkit decides, with root always allowed and root-only when polkit is absent.

The caller's identity always comes from the bus (GetConnectionUnixUser, polkit's system-bus-name
subject), never from anything the caller sends. Every check about a guest passes it as action
details (guest_uuid, guest_name), so polkit rules can delegate single guests to users or groups.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from typing import Any

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from .errors import AccessDenied

log = logging.getLogger(__name__)

POLKIT_NAME = "org.freedesktop.PolicyKit1"
POLKIT_PATH = "/org/freedesktop/PolicyKit1/Authority"
POLKIT_IFACE = "org.freedesktop.PolicyKit1.Authority"
_ALLOW_USER_INTERACTION = 1
_UNAVAILABLE = ("org.freedesktop.DBus.Error.ServiceUnknown", "org.freedesktop.DBus.Error.NameHasNoOwner")
_KNOWN_CALLERS = 1024  # uids remembered per unique bus name
# A check polkit may answer by asking a person for a password lasts as long as they type (the bus
# itself never times a reply out); sudo gives a password prompt 5 minutes too.
_INTERACTIVE_TIMEOUT = 300.0


# Password prompts pending at once: one per user, a few in all. svirtd's one bus connection may wait on
# at most 128 replies (dbus-daemon's max_replies_per_connection): users who leave prompts open must not
# take every slot and leave the delegated admins' checks failing. Beyond these, a check is asked
# without interaction (polkit's answer for someone not yet authenticated: no).
MAX_PROMPTS_PER_USER = 1
MAX_PROMPTS = 8


class PromptSlots:
    """Who is being asked for a password right now (pure bookkeeping, on the event loop)."""

    def __init__(self, per_user: int = MAX_PROMPTS_PER_USER, total: int = MAX_PROMPTS) -> None:
        self._per_user, self._total = per_user, total
        self._held: dict[int, int] = {}

    def take(self, uid: int) -> bool:
        if self._held.get(uid, 0) >= self._per_user or sum(self._held.values()) >= self._total:
            return False
        self._held[uid] = self._held.get(uid, 0) + 1
        return True

    def give_back(self, uid: int) -> None:
        left = self._held.get(uid, 0) - 1
        if left > 0:
            self._held[uid] = left
        else:
            self._held.pop(uid, None)


class Action(enum.StrEnum):
    QUERY = "org.svirt.manager1.query"
    ISOLATE = "org.svirt.manager1.isolate"
    RELEASE = "org.svirt.manager1.release"
    VERIFY = "org.svirt.manager1.verify"  # the proof: O(guests^2) policy work, libvirt calls, disk reads
    AUDIT = "org.svirt.manager1.audit"  # a guest's raw audit records (pids, inodes, commands)
    CLUSTER = "org.svirt.manager1.cluster"  # frees another host's pairs cluster-wide (ForgetHost)


class PolkitUnavailable(Exception):
    """polkitd is not on the bus."""


async def _call(bus: MessageBus, msg: Message, timeout: float) -> Message:
    reply = await asyncio.wait_for(bus.call(msg), timeout)
    if reply is None:
        raise AccessDenied("no reply from the bus; refusing")
    return reply


async def caller_uid(bus: MessageBus, sender: str) -> int:
    """The Unix uid behind a unique bus name, as the bus daemon knows it."""
    reply = await _call(bus, Message(
        destination="org.freedesktop.DBus", path="/org/freedesktop/DBus", interface="org.freedesktop.DBus",
        member="GetConnectionUnixUser", signature="s", body=[sender],
    ), 10)
    if reply.message_type is not MessageType.METHOD_RETURN:
        raise AccessDenied(f"cannot establish who {sender} is; refusing")
    return int(reply.body[0])


async def require_root(bus: MessageBus, sender: str | None, what: str) -> None:
    """For calls only the libvirt hook (running as root) makes: no polkit, no delegation."""
    if not sender or await caller_uid(bus, sender) != 0:
        raise AccessDenied(f"only root (the libvirt hook) may call {what}")


class Authorizer:
    def __init__(self, bus: MessageBus, timeout: float = 30.0,
                 interactive_timeout: float = _INTERACTIVE_TIMEOUT) -> None:
        self.bus = bus
        self._bus = bus
        self._timeout = timeout
        self._interactive_timeout = interactive_timeout
        self._uids: dict[str, int] = {}
        self._prompts = PromptSlots()
        self._checks = 0  # numbers cancellation ids

    def known_uid(self, sender: str | None) -> int | None:
        """The caller's uid if the bus was asked already (no wait), else None."""
        return self._uids.get(sender) if sender is not None else None

    async def _uid(self, sender: str) -> int:
        """The caller's uid, asked of the bus once per connection: a unique name is never reused while
        the bus runs, and Query asks for every call that has denials to show."""
        uid = self._uids.get(sender)
        if uid is None:
            uid = await caller_uid(self._bus, sender)
            if len(self._uids) >= _KNOWN_CALLERS:
                del self._uids[next(iter(self._uids))]
            self._uids[sender] = uid
        return uid

    async def check(self, sender: str | None, action: Action, details: dict[str, str],
                    interactive: bool = False) -> None:
        """AccessDenied (with what to do about it) unless the caller may perform the action."""
        if action is Action.QUERY:
            return
        if not sender:
            raise AccessDenied("the call carries no sender; refusing")
        verb = action.value.rsplit(".", 1)[1]
        guest = details.get("guest_name") or details.get("guest") or "guests"
        uid = await self._uid(sender)
        if uid == 0:
            return
        prompt = interactive and self._prompts.take(uid)
        if interactive and not prompt:
            log.info("uid %d asked to %s with a password prompt while one is pending: asked without one",
                     uid, verb)
        try:
            authorized = await self._polkit(sender, action, details, prompt)
        except PolkitUnavailable:
            raise AccessDenied(f"polkit is not running, so only root may {verb} {guest}") from None
        except (TimeoutError, OSError) as exc:
            log.warning("polkit check failed (%s): denying", exc)
            raise AccessDenied(f"the authorization check failed ({exc}); refusing to {verb} {guest}") from None
        finally:
            if prompt:
                self._prompts.give_back(uid)
        if not authorized:
            raise AccessDenied(f"not authorized to {verb} {guest} (polkit action {action.value}); an admin can "
                               "grant it with a polkit rule, see 50-svirtd-delegate.rules.example")

    async def permits(self, sender: str | None, action: Action, details: dict[str, str]) -> bool:
        """Whether the caller may, asking nobody for a password: for what a reply shows, not for what
        a call does (a refusal there is an error, from check())."""
        try:
            await self.check(sender, action, details, interactive=False)
        except AccessDenied:
            return False
        return True

    async def is_root(self, sender: str | None) -> bool:
        return sender is not None and await self._uid(sender) == 0

    async def _polkit(self, sender: str, action: Action, details: dict[str, str], interactive: bool) -> bool:
        subject: list[Any] = ["system-bus-name", {"name": Variant("s", sender)}]
        flags = _ALLOW_USER_INTERACTION if interactive else 0
        self._checks += 1
        cancel_id = f"svirtd-{self._checks}" if interactive else ""
        try:
            reply = await _call(self._bus, Message(
                destination=POLKIT_NAME, path=POLKIT_PATH, interface=POLKIT_IFACE, member="CheckAuthorization",
                signature="(sa{sv})sa{ss}us", body=[subject, action.value, details, flags, cancel_id],
            ), self._interactive_timeout if interactive else self._timeout)
        except (TimeoutError, asyncio.CancelledError):
            if cancel_id:  # the prompt goes away too, not only svirtd's wait for it
                self._bus.send(Message(destination=POLKIT_NAME, path=POLKIT_PATH, interface=POLKIT_IFACE,
                                       member="CancelCheckAuthorization", signature="s", body=[cancel_id]))
            raise
        if reply.message_type is MessageType.ERROR:
            if reply.error_name in _UNAVAILABLE:
                raise PolkitUnavailable()
            text = reply.body[0] if reply.body else ""
            raise AccessDenied(f"polkit refused the check ({reply.error_name}: {text}); refusing")
        is_authorized, _is_challenge, _details = reply.body[0]
        return bool(is_authorized)
