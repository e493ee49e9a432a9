"""The single model worker: one thread owns the model, a bounded queue in front of it.

Why: GPU work issued concurrently from several executor threads contends for the device, breaks CUDA-graph
/ compiled-kernel assumptions and makes latency unpredictable. One worker serialises model work; a bounded
queue turns overload into an immediate "busy" answer instead of unbounded memory and latency growth; each
job carries a deadline and a cancel flag that the model code polls between denoising steps, so a stale
request stops wasting the GPU. ROS-free: the node submits closures and waits on the returned future.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

LOG = logging.getLogger(__name__)


class WorkerError(RuntimeError):
    """Base of the worker's refusal reasons (each maps to a service response code)."""


class Busy(WorkerError):
    """The queue is full: the caller should retry later."""


class NotReady(WorkerError):
    """The worker is not running or warm-up has not finished (or failed)."""


class DeadlineExceeded(WorkerError):
    """The job's deadline passed before or while it ran."""


class Cancelled(WorkerError):
    """The caller cancelled the job."""


@dataclass
class JobContext:
    """Handed to a job: deadline/cancel polling and per-stage timing."""

    deadline: float | None
    cancel_event: threading.Event
    timings: dict[str, float] = field(default_factory=dict)

    def expired(self, now: float | None = None) -> bool:
        return self.deadline is not None and (time.monotonic() if now is None else now) > self.deadline

    def check(self) -> None:
        """Raise if the job should stop; model code calls this between steps (cheap)."""
        if self.cancel_event.is_set():
            raise Cancelled("request cancelled")
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise DeadlineExceeded("deadline passed while the request was being served")

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Accumulate wall time of a stage (e.g. 'encode', 'denoise', 'decode', 'checker')."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t0


@dataclass
class _Job:
    fn: Callable[[JobContext], Any]
    future: Future
    ctx: JobContext
    enqueued: float


class JobHandle:
    """What submit() returns: the future of the job's result and a way to cancel it."""

    def __init__(self, job: _Job) -> None:
        self._job = job
        self.future: Future = job.future

    def cancel(self) -> None:
        """Stop the job at its next check (or before it starts)."""
        self._job.ctx.cancel_event.set()

    @property
    def timings(self) -> dict[str, float]:
        return self._job.ctx.timings


class ModelWorker:
    """One daemon thread running jobs from a bounded FIFO; start() runs the warm-up first."""

    def __init__(
        self,
        queue_size: int = 4,
        warmup: Callable[[], None] | None = None,
        name: str = "cosmos-model-worker",
    ) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be >= 1")
        self.queue_size = queue_size
        # A deque under a condition rather than queue.Queue: a job cancelled or past its deadline while
        # waiting frees its slot at once (queue.Queue cannot drop an item from the middle), so dead
        # requests never make live ones BUSY.
        self._jobs: collections.deque[_Job] = collections.deque()
        self._cv = threading.Condition()
        self._warmup = warmup
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.ready = threading.Event()
        self.warmup_error: BaseException | None = None
        self.warmup_seconds: float | None = None
        self._stopping = threading.Event()
        self.in_flight = 0
        self._current: _Job | None = None
        self.served = 0
        self.rejected_busy = 0

    # lifecycle -------------------------------------------------------------------------------------
    def start(self) -> ModelWorker:
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Refuse new jobs, cancel the queued ones, ask the running one to stop at its next check."""
        with self._cv:
            self._stopping.set()
            current = self._current
            if current is not None:
                current.ctx.cancel_event.set()
            while self._jobs:
                job = self._jobs.popleft()
                if not job.future.done():
                    job.future.set_exception(Cancelled("predictor shutting down"))
            self._cv.notify_all()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def queue_depth(self) -> int:
        """Live jobs waiting (cancelled or expired ones do not count)."""
        with self._cv:
            self._drop_dead(time.monotonic())
            return len(self._jobs)

    def _drop_dead(self, now: float) -> None:
        """Remove waiting jobs that were cancelled or whose deadline passed; fail their futures. Lock held."""
        if not any(j.ctx.cancel_event.is_set() or j.ctx.expired(now) for j in self._jobs):
            return
        keep: collections.deque[_Job] = collections.deque()
        for job in self._jobs:
            if job.ctx.cancel_event.is_set():
                if not job.future.done():
                    job.future.set_exception(Cancelled("request cancelled while waiting"))
            elif job.ctx.expired(now):
                if not job.future.done():
                    job.future.set_exception(DeadlineExceeded("deadline passed while waiting for the model"))
            else:
                keep.append(job)
        self._jobs = keep

    # submission ------------------------------------------------------------------------------------
    def submit(self, fn: Callable[[JobContext], Any], timeout: float | None = None) -> JobHandle:
        """Queue `fn(ctx)`; raise Busy when the queue is full, NotReady before warm-up completes."""
        if self._stopping.is_set() or not self._thread.is_alive():
            raise NotReady("the model worker is not running")
        if not self.ready.is_set():
            raise NotReady("the model is still warming up; retry in a moment")
        if self.warmup_error is not None:
            raise NotReady(f"the model failed to warm up: {self.warmup_error}")
        now = time.monotonic()
        job = _Job(
            fn=fn,
            future=Future(),
            ctx=JobContext(
                deadline=None if timeout is None else now + timeout, cancel_event=threading.Event()
            ),
            enqueued=now,
        )
        with self._cv:
            self._drop_dead(now)
            if len(self._jobs) >= self.queue_size:
                self.rejected_busy += 1
                raise Busy(f"request queue full ({self.queue_size} waiting); retry later")
            self._jobs.append(job)
            self._cv.notify()
        return JobHandle(job)

    # the thread ------------------------------------------------------------------------------------
    def _run(self) -> None:
        if self._warmup is not None:
            t0 = time.perf_counter()
            try:
                self._warmup()
            except BaseException as exc:  # the node reports it; the thread keeps answering NotReady
                LOG.exception("warm-up failed")
                self.warmup_error = exc
            self.warmup_seconds = time.perf_counter() - t0
        self.ready.set()
        while True:
            with self._cv:
                while not self._jobs and not self._stopping.is_set():
                    self._cv.wait()
                if self._stopping.is_set():
                    break
                job = self._jobs.popleft()
                if not job.future.set_running_or_notify_cancel():
                    continue
                self.in_flight = 1
                self._current = job
            job.ctx.timings["queue_wait"] = time.monotonic() - job.enqueued
            try:
                job.ctx.check()
                result = job.fn(job.ctx)
            except BaseException as exc:
                job.future.set_exception(exc)
            else:
                job.future.set_result(result)
            finally:
                with self._cv:
                    self.in_flight = 0
                    self._current = None
                    self.served += 1
