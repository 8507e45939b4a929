"""Job objects on the bus, as systemd's and udisks' jobs: /org/svirt/Manager/job/<N> with org.svirt.Job1.

Manager1.StartIsolate/StartRelease/StartVerify return a job's path at once (after authorization); the
blocking Isolate/Release/Verify make a job too, so a watcher sees their progress. A job comes and goes
with InterfacesAdded / InterfacesRemoved on /org/svirt/Manager (the ObjectManager of the guests' objects),
its counters change with PropertiesChanged (at most 10 a second), and its end is Manager1.JobRemoved
(id, path, guest, result, error name, error message), sent before the object goes.
"""

# No `from __future__ import annotations`: dbus-fast reads the D-Bus signatures from the annotations.
import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from dbus_fast import Variant
from dbus_fast import introspection as intr
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusBool, DBusDouble, DBusStr, DBusUInt32, DBusUInt64
from dbus_fast.constants import PropertyAccess
from dbus_fast.service import ServiceInterface, dbus_property, method

from . import errors
from .authz import Action, Authorizer
from .dbus_annotate import annotate
from .dbus_errors import dbus_errors, error_name
from .jobs import Job, JobControl, Result, State, Throttle, current_job, fraction

log = logging.getLogger(__name__)

JOB_INTERFACE = "org.svirt.Job1"
JOB_PREFIX = "/org/svirt/Manager/job/"
CHANGES_PER_SECOND = 10
SIGNATURES = {"Id": "u", "Operation": "s", "Guest": "s", "State": "s", "Progress": "d", "FilesDone": "t",
              "FilesTotal": "t", "Cancellable": "b"}
T = TypeVar("T")

JOB_DOCS: dict[str, str] = {
    "Id": "The job's number, unique while svirtd runs (JobRemoved names it).",
    "Operation": "isolate, release or verify.",
    "Guest": "The guest's UUID (or the name the caller gave, while svirtd does not know the guest); '' for verify.",
    "State": "running, or cancelling (rolling back what it labeled).",
    "Progress": "0..1: FilesDone of FilesTotal; 0 while nothing is counted (a job that walks no tree stays at "
                "0 until it ends).",
    "FilesDone": "Entries of the guest's directory trees walked so far.",
    "FilesTotal": "Entries counted in those trees (0 while unknown); grows as each tree is counted.",
    "Cancellable": "Whether Cancel can stop it: isolate and verify can, a release (which puts original labels "
                   "back) cannot.",
    "Cancel": "Stop the job, authorized as the operation itself: an isolation rolls back what it labeled (a "
              "guest it isolated for the first time is not isolated); a verify stops waiting for the proof. "
              "The job then ends with JobRemoved result 'canceled'. A job already past its last tree may "
              "still end 'done'.",
}


class JobObject(ServiceInterface):
    def __init__(self, job: Job, jobs: "Jobs", action: Action, details: dict[str, str]) -> None:
        super().__init__(JOB_INTERFACE)
        self.job = job
        self._jobs = jobs
        self.action = action
        self.details = details
        self.published = job.snapshot()
        self.task: asyncio.Task[Any] | None = None
        # Cancelled by cancelling its task (a job that labels nothing, e.g. verify's wait for the proof).
        self.cancel_task = False

    @property
    def variants(self) -> dict[str, Variant]:
        return {name: Variant(SIGNATURES[name], value) for name, value in self.job.snapshot().items()}

    @method()
    @dbus_errors
    async def Cancel(self) -> None:
        await self._jobs.cancel(self)

    @dbus_property(access=PropertyAccess.READ)
    def Id(self) -> DBusUInt32:
        return self.job.id

    @dbus_property(access=PropertyAccess.READ)
    def Operation(self) -> DBusStr:
        return self.job.operation

    @dbus_property(access=PropertyAccess.READ)
    def Guest(self) -> DBusStr:
        return self.job.guest

    @dbus_property(access=PropertyAccess.READ)
    def State(self) -> DBusStr:
        return self.job.state.value

    @dbus_property(access=PropertyAccess.READ)
    def Progress(self) -> DBusDouble:
        return fraction(*self.job.control.counts())

    @dbus_property(access=PropertyAccess.READ)
    def FilesDone(self) -> DBusUInt64:
        return self.job.control.counts()[0]

    @dbus_property(access=PropertyAccess.READ)
    def FilesTotal(self) -> DBusUInt64:
        return self.job.control.counts()[1]

    @dbus_property(access=PropertyAccess.READ)
    def Cancellable(self) -> DBusBool:
        return self.job.control.cancellable

    def introspect(self) -> intr.Interface:
        return annotate(super().introspect(), JOB_DOCS, const=("Id", "Operation", "Guest", "Cancellable"))


Removed = Callable[[int, str, str, str, str, str], None]


class Jobs:
    """The running jobs: each an asyncio task whose worker threads see it as jobs.current_job."""

    def __init__(self, bus: MessageBus, authorizer: Authorizer, removed: Removed,
                 sender: Callable[[], str | None], interactive: Callable[[], bool]) -> None:
        self._bus = bus
        self._authz = authorizer
        self._removed = removed
        self._sender = sender
        self._interactive = interactive
        self._next = 1
        self.objects: dict[str, JobObject] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    def managed(self) -> dict[str, dict[str, dict[str, Variant]]]:
        """GetManagedObjects' part about jobs."""
        return {path: {JOB_INTERFACE: obj.variants} for path, obj in self.objects.items()}

    def start(self, operation: str, guest: str, action: Action, details: dict[str, str],
              work: Callable[[], Awaitable[T]], cancellable: bool = True,
              cancel_task: bool = False) -> tuple[str, "asyncio.Task[T]"]:
        """Export a job and run work() for it; (its path, the task: awaited by a blocking call, whose
        caller then gets the result or the error itself)."""
        loop = asyncio.get_running_loop()
        job_id, self._next = self._next, self._next + 1
        path = f"{JOB_PREFIX}{job_id}"
        throttle = Throttle(1 / CHANGES_PER_SECOND)
        timer: asyncio.TimerHandle | None = None

        def publish() -> None:
            nonlocal timer
            timer = None
            throttle.ready()  # counted as sent: the next waits a whole interval
            if path in self.objects:
                now = obj.job.snapshot()
                changed = {k: v for k, v in now.items() if obj.published.get(k) != v}
                obj.published = now
                if changed:
                    obj.emit_properties_changed(changed)

        def schedule() -> None:  # on the loop: one PropertiesChanged per interval carries every change
            nonlocal timer
            if timer is None:
                timer = loop.call_later(throttle.wait(), publish)

        def changed() -> None:  # from a worker thread, or the loop
            with contextlib.suppress(RuntimeError):  # the loop is gone (svirtd stopping): nobody to tell
                loop.call_soon_threadsafe(schedule)

        control = JobControl(cancellable=cancellable, on_change=changed)
        obj = JobObject(Job(job_id, operation, guest, control), self, action, details)
        obj.cancel_task = cancel_task
        self.objects[path] = obj
        self._bus.export(path, obj)
        task = asyncio.create_task(self._run(path, obj, work), name=f"job-{job_id}")
        obj.task = task
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return path, task

    def _done(self, task: "asyncio.Task[Any]") -> None:
        self._tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a Start* caller learns it from JobRemoved, not from the task

    async def _run(self, path: str, obj: JobObject, work: Callable[[], Awaitable[T]]) -> T:
        current_job.set(obj.job.control)  # this task's own context, carried into its threads
        result, name, text = Result.DONE, "", ""
        try:
            try:
                return await work()
            except asyncio.CancelledError:
                if not obj.job.control.cancelled:  # svirtd is stopping
                    raise
                raise errors.Cancelled(f"{obj.job.operation} cancelled") from None
        except errors.Cancelled as exc:
            result, (name, text) = Result.CANCELED, error_name(exc)
            raise
        except Exception as exc:
            result, (name, text) = Result.FAILED, error_name(exc)
            raise
        except BaseException:
            result, name, text = Result.FAILED, "org.svirt.Manager1.Error.Failed", "svirtd is stopping"
            raise
        finally:
            del self.objects[path]
            job = obj.job
            try:
                self._removed(job.id, path, job.guest, result.value, name, text)
                self._bus.unexport(path, obj)
            except Exception:  # the bus is gone (svirtd stopping): nobody left to tell
                log.debug("job %d ended without a bus to say so", job.id, exc_info=True)

    async def cancel(self, obj: JobObject) -> None:
        """Job1.Cancel: authorized as the operation (an unprivileged caller cannot stop root's isolation)."""
        await self._authz.check(self._sender(), obj.action, obj.details, self._interactive())
        if not obj.job.control.cancellable:
            raise errors.InvalidArgument(f"a {obj.job.operation} job cannot be cancelled: it puts original labels "
                                         "back, and stopping half-way would leave the guest's files half restored")
        if obj.job.state is State.CANCELLING:
            return
        obj.job.state = State.CANCELLING
        obj.job.control.cancel()
        obj.job.control.on_change()
        if obj.cancel_task and obj.task is not None:
            obj.task.cancel()

    async def stop(self) -> None:
        """svirtd is stopping: wait for the running jobs (their threads label through open descriptors)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks))
