"""One thread owns the Engine; requests queue and run in micro-batches of requests that share their options.

The Engine is not thread-safe, so nothing but the scheduler thread ever calls it: safe by construction. Callers
(HTTP handlers) :meth:`Scheduler.submit` a :class:`Job` and wait on its ``future`` (a
``concurrent.futures.Future``, awaitable with ``asyncio.wrap_future``). The thread takes the oldest job, waits at
most ``max_wait`` (counted from when that job was queued) for more jobs with the same options key, and runs up to
``max_batch`` of them in one ``engine.transcribe`` call; the engine groups the rows by adapter route itself.
Jobs with another key stay queued, in order, for the next batch.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

logger = logging.getLogger("lora_whisper")


class QueueFull(RuntimeError):
    """The queue holds ``max_queue`` jobs; try again later."""


class ShuttingDown(RuntimeError):
    """The scheduler is draining or stopped and takes no new work."""


@dataclass
class SchedulerOptions:
    """How queued requests are batched."""

    max_batch: int = 8
    """Most requests run in one engine call (1 turns micro-batching off)."""
    max_wait: float = 0.05
    """Seconds the oldest queued request may wait for others with the same options before its batch starts."""
    max_queue: int = 64
    """Most requests waiting (not yet running); beyond that ``submit`` raises QueueFull."""


def options_key(options) -> str:
    """A key equal for requests whose options can share one engine call (every field of the options)."""
    d = dataclasses.asdict(options) if dataclasses.is_dataclass(options) else dict(vars(options))
    return json.dumps(d, sort_keys=True, default=str)


@dataclass(eq=False)  # identity: jobs hold numpy arrays, and the queue removes jobs by identity
class Job:
    """One request: one input for the engine and the options to run it with."""

    input: object
    """A path or a ``(name, float32 mono 16 kHz samples)`` tuple."""
    options: object
    """A TranscribeOptions."""
    stream: bool = False
    """Deliver segments as they are decoded (``on_event``) when the engine can stream."""
    on_event: Callable[[object], None] | None = None
    """Called from the scheduler thread with each Segment of a streamed job (must be thread-safe, e.g.
    ``loop.call_soon_threadsafe``)."""
    audio_seconds: float = 0.0
    """Duration of the input, for metrics."""
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    """Resolves to the Transcription or FileError; raises when the engine failed on this job."""
    key: str = ""
    queued_at: float = 0.0
    started_at: float | None = None


class Scheduler:
    """Owns an Engine in one thread; micro-batches queued jobs that share options."""

    def __init__(self, engine, options: SchedulerOptions | None = None, metrics=None):
        self.engine = engine
        self.options = options or SchedulerOptions()
        if self.options.max_batch < 1 or self.options.max_queue < 1 or self.options.max_wait < 0:
            raise ValueError(f"scheduler options out of range: {self.options}")
        self.metrics = metrics
        self._jobs: deque[Job] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._running = 0
        self._thread: threading.Thread | None = None
        self._last_adapter: object = None
        self.batches = 0
        """Engine calls made (for tests and benchmarks)."""
        self.batch_seconds = 0.0
        """Total seconds spent in engine calls (for Retry-After estimates)."""
        self.jobs_done = 0

    # ---- public ------------------------------------------------------------------------------------------------
    def start(self) -> Scheduler:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="lora-whisper-scheduler", daemon=True)
            self._thread.start()
        return self

    def submit(self, job: Job) -> concurrent.futures.Future:
        """Queue a job; raises QueueFull or ShuttingDown instead of blocking."""
        job.key = options_key(job.options) + ("|stream" if job.stream and self._can_stream() else "")
        with self._cond:
            if self._stopping:
                raise ShuttingDown("the server is shutting down")
            if len(self._jobs) >= self.options.max_queue:
                raise QueueFull(f"queue full ({self.options.max_queue} requests waiting)")
            job.queued_at = time.monotonic()
            self._jobs.append(job)
            self._gauge()
            self._cond.notify_all()
        return job.future

    @property
    def depth(self) -> int:
        """Jobs waiting (not yet running)."""
        return len(self._jobs)

    @property
    def busy(self) -> int:
        """Jobs queued or running."""
        return len(self._jobs) + self._running

    def retry_after(self) -> int:
        """Seconds a client should wait before retrying a refused request (rough: queue / batch rate)."""
        per_batch = self.batch_seconds / self.batches if self.batches else 1.0
        return max(1, int(per_batch * (self.depth / self.options.max_batch + 1) + 0.999))

    def stop(self, timeout: float = 30.0) -> bool:
        """Take no new jobs, finish the queued and running ones within ``timeout`` seconds, stop the thread.

        Returns True when everything finished; jobs still queued at the timeout fail with ShuttingDown.
        """
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            drained = not self._thread.is_alive()
        else:
            drained = True
        with self._cond:
            left = list(self._jobs)
            self._jobs.clear()
            self._gauge()
        for job in left:
            if not job.future.done():
                job.future.set_exception(ShuttingDown("the server shut down before this request ran"))
        if left:
            logger.warning("shutdown: %d queued request(s) not run (drain timeout %.0f s)", len(left), timeout)
        return drained and not left

    # ---- the thread --------------------------------------------------------------------------------------------
    def _can_stream(self) -> bool:
        return hasattr(self.engine, "stream")

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(len(self._jobs))

    def _take(self) -> list[Job] | None:
        """The next batch: the oldest job plus queued jobs with its key, up to max_batch, waiting up to max_wait."""
        o = self.options
        with self._cond:
            while not self._jobs:
                if self._stopping:
                    return None
                self._cond.wait(0.5)
            first = self._jobs.popleft()
            batch = [first]
            solo = first.key.endswith("|stream")
            deadline = first.queued_at + o.max_wait
            while not solo and len(batch) < o.max_batch:
                for job in list(self._jobs):
                    if job.key == first.key and len(batch) < o.max_batch:
                        self._jobs.remove(job)
                        batch.append(job)
                left = deadline - time.monotonic()
                if len(batch) >= o.max_batch or left <= 0 or self._stopping:
                    break
                self._cond.wait(left)
            self._running = len(batch)
            self._gauge()
        return batch

    def _loop(self) -> None:
        while True:
            try:
                batch = self._take()
            except Exception:  # noqa: BLE001 - never let the thread die: requests would hang
                logger.exception("scheduler: cannot form a batch")
                time.sleep(0.1)
                continue
            if batch is None:
                return
            try:
                live = [j for j in batch if j.future.set_running_or_notify_cancel()]  # skip jobs whose client left
                if live:
                    self._run(live)
            except BaseException as e:  # noqa: BLE001 - the thread must survive anything a request causes
                logger.exception("scheduler: unexpected error")
                for j in batch:
                    if not j.future.done():
                        j.future.set_exception(e)
            finally:
                with self._cond:
                    self._running = 0

    def _run(self, batch: list[Job]) -> None:
        now = time.monotonic()
        for j in batch:
            j.started_at = now
            if self.metrics is not None:
                self.metrics.queue_wait.observe(now - j.queued_at)
        if self.metrics is not None:
            self.metrics.batch_size.observe(len(batch))
        # the engine remembers adapters that failed to load; the registry may have changed since (a server lives
        # long), so let it look again
        holder = getattr(self.engine, "pool", None) or getattr(self.engine, "runtime", None)  # torch / ct2
        forget = getattr(holder, "forget_failures", None)
        if forget is not None:
            forget()
        before = set(getattr(self.engine, "resident", {}) or {})
        t = time.perf_counter()
        try:
            if batch[0].key.endswith("|stream"):
                results = [self._stream_one(batch[0])]
            else:
                results = self._transcribe(batch)
        finally:
            self.batch_seconds += time.perf_counter() - t
            self.batches += 1
            self._count_adapters(before)
        self._count_swaps(results)
        for j, r in zip(batch, results):
            if isinstance(r, BaseException):
                j.future.set_exception(r)
            else:
                if self.metrics is not None and getattr(r, "duration", None):
                    self.metrics.audio_seconds.inc(r.duration)
                j.future.set_result(r)
            self.jobs_done += 1

    def _transcribe(self, batch: list[Job]) -> list:
        try:
            results = list(self.engine.transcribe([j.input for j in batch], batch[0].options))
            if len(results) != len(batch):
                raise RuntimeError(f"engine returned {len(results)} results for {len(batch)} inputs")
            return results
        except Exception as e:  # noqa: BLE001
            if len(batch) == 1:
                logger.error("engine failed on %s: %s: %s", _name(batch[0].input), type(e).__name__, e)
                return [e]
        # one request must not fail the others: run them one by one
        logger.warning("engine failed on a batch of %d; retrying one by one", len(batch))
        return [r for j in batch for r in self._transcribe([j])]

    def _stream_one(self, job: Job):
        final = None
        try:
            for ev in self.engine.stream(job.input, job.options):
                if hasattr(ev, "start") and hasattr(ev, "end") and not hasattr(ev, "segments"):
                    if job.on_event is not None:
                        job.on_event(ev)
                else:
                    final = ev
        except Exception as e:  # noqa: BLE001
            logger.error("engine failed on %s: %s: %s", _name(job.input), type(e).__name__, e)
            return e
        if final is None:
            return RuntimeError(f"engine.stream gave no final result for {_name(job.input)}")
        return final

    def _count_swaps(self, results: list) -> None:
        """Adapter switches: the engine runs one group per route in order of first appearance."""
        order = list(dict.fromkeys(getattr(r, "adapter", None) for r in results if hasattr(r, "segments")))
        swaps = 0
        for a in order:
            if a != self._last_adapter:
                swaps += 1
            self._last_adapter = a
        if self.metrics is not None and swaps:
            self.metrics.adapter_swaps.inc(swaps)

    def _count_adapters(self, before: set) -> None:
        after = set(getattr(self.engine, "resident", {}) or {})
        if self.metrics is None:
            return
        loaded, evicted = after - before, before - after
        if loaded:
            self.metrics.adapter_loads.inc(len(loaded))
        if evicted:
            self.metrics.adapter_evictions.inc(len(evicted))


def _name(item) -> str:
    return item[0] if isinstance(item, tuple) else str(item)
