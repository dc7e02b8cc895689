"""The scheduler-polling fix (aiida_hpcai.engine_fixes): an update that ends cancelled does not stop polling."""

import asyncio

from aiida.engine.processes.calcjobs.manager import JobsList

from aiida_hpcai import engine_fixes


class _Queue:
    def __init__(self, loop):
        self.loop = loop


class _Computer:
    @staticmethod
    def get_minimum_job_poll_interval():
        return 0.0


class _AuthInfo:
    pk = 1
    computer = _Computer()


async def _cancel_first_update_then_wait(timeout: float):
    """A job's update future after the first scheduler poll was cancelled mid-way; the polls made."""
    jobs = JobsList(_AuthInfo(), _Queue(asyncio.get_running_loop()))
    polls = []

    async def get_jobs_from_scheduler():
        polls.append(len(polls))
        jobs._polling_jobs = frozenset(jobs._job_update_requests)
        if len(polls) == 1:
            await asyncio.sleep(3600)  # the first poll hangs until it is cancelled
        return {}

    jobs._get_jobs_from_scheduler = get_jobs_from_scheduler
    with jobs.request_job_info_update(_AuthInfo(), '42') as future:
        while not polls:
            await asyncio.sleep(0.01)
        (update,) = [task for task in asyncio.all_tasks() if task.get_coro().__name__ == 'updating']
        update.cancel()
        try:
            job_info = await asyncio.wait_for(future, timeout)
        except TimeoutError:
            return 'never resolved', polls
    return job_info, polls


def test_a_cancelled_poll_is_followed_by_another():
    engine_fixes.apply()
    job_info, polls = asyncio.run(_cancel_first_update_then_wait(timeout=5))
    # the job is not in the (empty) listing of the second poll, so it is reported gone: None
    assert (job_info, polls) == (None, [0, 1])


def test_without_the_fix_a_cancelled_poll_stops_polling(monkeypatch):
    """aiida-core's own method: the failure the fix is for (if aiida-core fixes it, drop engine_fixes)."""
    engine_fixes.apply()
    monkeypatch.setattr(JobsList, '_ensure_updating', engine_fixes._ORIGINAL)
    job_info, polls = asyncio.run(_cancel_first_update_then_wait(timeout=1))
    assert (job_info, polls) == ('never resolved', [0])


def test_applying_twice_keeps_one_fix():
    engine_fixes.apply()
    engine_fixes.apply()
    assert JobsList._ensure_updating is engine_fixes._ensure_updating
