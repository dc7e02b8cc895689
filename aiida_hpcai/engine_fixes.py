"""A fix for aiida-core's scheduler polling, applied when aiida-hpcai's processes are imported.

aiida-core 2.9's :class:`~aiida.engine.processes.calcjobs.manager.JobsList` polls a computer's scheduler in a task
started by a timer (``_update_handle``). It clears that handle only when an update returns or raises an
``Exception``. When the update task ends any other way (cancelled: ``asyncio.CancelledError`` is a
``BaseException``), the handle stays set, so ``_ensure_updating`` believes an update is still coming and never
schedules one: every CalcJob of that computer in that process then waits in the scheduler state ``running``
forever after its job has ended. Seen twice under heavy load (a test's NiO ``pw.x`` relaxation stayed "RUNNING"
for over 20 minutes after ``pw.x`` had ended); a look inside the stuck process (gdb, the JobsList's state) found
the handle's timer long fired, its ``updating`` coroutine closed, and the job's update future still pending.

:func:`apply` replaces ``JobsList._ensure_updating`` with one that clears the handle however the update ends and,
when requests are still waiting, schedules the next update; it also holds the update task (the event loop keeps
only a weak reference to tasks). Applied once per process, from the ``calculations`` and ``workchains`` packages.
"""

from __future__ import annotations

import asyncio
import contextvars

#: aiida-core's own ``JobsList._ensure_updating``, kept by :func:`apply` (a test shows the failure with it)
_ORIGINAL = None


def _ensure_updating(self) -> None:
    """``JobsList._ensure_updating`` whose update always clears its handle and reschedules while requests wait."""
    if self._update_handle is not None:
        return

    async def updating() -> None:
        try:
            await self._update_job_info()
        finally:
            # however the update ended (returned, raised, cancelled): the next request or the loop below may schedule
            self._update_handle = None
            self._hpcai_update_task = None
            if self._update_requests_outstanding() and not self._loop.is_closed():
                _ensure_updating(self)

    def start() -> None:
        self._hpcai_update_task = asyncio.ensure_future(updating())

    # an empty context, as aiida-core does, so that the handle does not keep a process's context alive
    self._update_handle = self._loop.call_later(self._get_next_update_delay(), start, context=contextvars.Context())


def apply() -> None:
    """Install :func:`_ensure_updating` on aiida-core's ``JobsList`` (idempotent)."""
    from aiida.engine.processes.calcjobs.manager import JobsList

    global _ORIGINAL
    if JobsList._ensure_updating is _ensure_updating:
        return
    _ORIGINAL = JobsList._ensure_updating
    JobsList._ensure_updating = _ensure_updating
