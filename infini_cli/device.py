"""Device and dtype resolution, in one place."""

from __future__ import annotations

import os
import re
from typing import Optional

import torch


class DeviceError(ValueError):
    """A device the user asked for that this machine cannot give; one line, with the fix."""


def resolve_device(spec: str = "auto") -> torch.device:
    """auto: CUDA when available, else CPU. cpu, cuda and cuda:N as asked, checked."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if re.fullmatch(r"cuda(:\d+)?", spec):
        if not torch.cuda.is_available():
            raise DeviceError(f"--device {spec}: no CUDA GPU is available here; use --device cpu or auto")
        index = int(spec.split(":")[1]) if ":" in spec else 0
        if index >= torch.cuda.device_count():
            raise DeviceError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) here; "
                              f"use cuda:0..cuda:{torch.cuda.device_count() - 1}")
        return torch.device(spec)
    raise DeviceError(f"--device {spec!r} is not a device; use auto, cpu, cuda or cuda:N")


def set_threads(threads: Optional[int]) -> None:
    if threads is not None:
        if threads < 1:
            raise DeviceError(f"--threads {threads}: give a positive number of CPU threads")
        torch.set_num_threads(threads)


# Below this many parameters a second thread barely helps (the bundled reader: 15.5K against
# 17.2K tokens/s with two idle cores) and, when another process holds a core, costs up to 60x
# (OpenMP threads spin waiting for each other): such models default to one thread.
SMALL_MODEL_PARAMETERS = 20_000_000
# torch's own choice at start (the cores it may use), before any command lowers it
_TORCH_DEFAULT_THREADS = torch.get_num_threads()


def busy_cores() -> int:
    """Cores other processes keep busy (0 where unknown): the 1-minute load average, rounded,
    and at most the processes running at this moment besides this one (Linux's
    /proc/loadavg), so the load a command of ours left behind a moment ago does not count.

    A writer given every core while another process holds one runs its OpenMP threads in
    lockstep with a thread that keeps being descheduled: the same spin-waiting that made a
    small reader 60x slower under load."""
    try:
        busy = int(os.getloadavg()[0] + 0.5)
    except (AttributeError, OSError):  # not on this platform
        return 0
    running = _running_now()
    if running is not None:
        busy = min(busy, running - 1)
    return max(0, busy)


def _running_now() -> Optional[int]:
    """Processes runnable at this moment, this one included ("2/431" in /proc/loadavg); None
    where unknown."""
    try:
        with open("/proc/loadavg") as f:
            return int(f.read().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return None


def default_threads(n_parameters: int) -> int:
    """Threads when --threads is not given: one for a small reader; for a writer, every core
    that no other process is keeping busy (at least one)."""
    if n_parameters < SMALL_MODEL_PARAMETERS:
        return 1
    cores = max(1, min(os.cpu_count() or 1, _TORCH_DEFAULT_THREADS))
    return max(1, cores - busy_cores())


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{device.index or 0} ({torch.cuda.get_device_name(device)})"
    n = torch.get_num_threads()
    return f"cpu ({n} thread{'s' if n != 1 else ''})"
