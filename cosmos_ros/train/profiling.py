"""Profile a few training steps per process (`run.profile_steps`): where a step's time goes, per rank.

Why: a multi-GPU run that scales below expectation (DDP at 1.70x on two H200s, issue 20) cannot be
diagnosed from step times alone; the question is whether the GPUs wait for the collectives, for the host
(batch assembly, Python), or for each other. `torch.profiler` over `run.profile_steps` steps after
`run.profile_skip` warm-up steps answers it: each process writes `<output_dir>/profile/rank-<r>.txt` with
the wall time per step, the device time its kernels took (and how much of it is NCCL), and the operators
sorted by device and by host time. No trace file: a 2B step's trace is tens of MB; the table is what the
diagnosis needs, and `torch.profiler` can be run by hand for the rest.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch


class StepProfiler:
    """Starts `torch.profiler` before step `skip` + 1 and writes its tables after `steps` more steps."""

    def __init__(self, out_dir: str | Path, rank: int, skip: int, steps: int, device: torch.device) -> None:
        self.path = Path(out_dir) / "profile" / f"rank-{rank}.txt"
        self.skip, self.steps, self.rank = int(skip), int(steps), int(rank)
        self.cuda = device.type == "cuda"
        self._prof: Any = None
        self._t0 = 0.0
        self._first = -1
        self.done = self.steps <= 0

    def before_step(self, step: int) -> None:
        """Call with the number of steps done so far, before the step runs."""
        if self.done or self._prof is not None or step < self.skip:
            return
        acts = [torch.profiler.ProfilerActivity.CPU]
        if self.cuda:
            acts.append(torch.profiler.ProfilerActivity.CUDA)
            torch.cuda.synchronize()
        self._prof = torch.profiler.profile(activities=acts, record_shapes=False)
        self._prof.__enter__()
        self._first = step
        self._t0 = time.perf_counter()

    def after_step(self, step: int) -> None:
        """Call with the number of steps done, after the optimizer step."""
        if self._prof is None or step - self._first < self.steps:
            return
        if self.cuda:
            torch.cuda.synchronize()
        wall = (time.perf_counter() - self._t0) / self.steps
        self._prof.__exit__(None, None, None)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(self.report(self._prof, wall))
        self._prof, self.done = None, True

    def close(self) -> None:
        """Stop a profile the loop left running (a run stopped or failed inside the window): no report."""
        if self._prof is not None:
            self._prof.__exit__(None, None, None)
            self._prof, self.done = None, True

    def report(self, prof: Any, wall_s: float) -> str:
        avgs = prof.key_averages()
        n = self.steps

        lines = [f"rank {self.rank}: {n} steps profiled after {self.skip}", f"wall per step {wall_s:.4f} s"]
        if self.cuda:
            # the kernels themselves (device-side events), not the host ops that launched them: those carry
            # the same time again
            kernels = [e for e in avgs if str(getattr(e, "device_type", "")).endswith("CUDA")]
            device = sum(float(e.self_device_time_total) for e in kernels) / 1e6 / n
            nccl = sum(float(e.self_device_time_total) for e in kernels if "nccl" in e.key.lower()) / 1e6 / n
            lines[-1] += (
                f"; device kernels per step {device:.4f} s (NCCL {nccl:.4f} s); device busy "
                f"{100 * device / wall_s:.1f}% of the wall time (kernels on several streams overlap: "
                "busy can exceed 100%)"
            )
            lines += ["", "by device time:", avgs.table(sort_by="self_device_time_total", row_limit=30)]
        lines.append("")
        lines += ["by host time:", avgs.table(sort_by="self_cpu_time_total", row_limit=30)]
        return "\n".join(lines) + "\n"
