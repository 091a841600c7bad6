"""How many CPU threads torch runs with, chosen per run instead of taken blindly.

torch's default is one OpenMP thread per core, and its OpenMP runtime (GNU libgomp in the CPU
wheels) keeps idle threads spinning between parallel regions. On a quiet machine that is the
fastest choice; beside another busy process the threads wait on each other at every one of the
many small ops of a small denoiser, and 2 threads on 2 cores have been measured 2-20x slower
than 1 (`bench/bench_threads.py`, `docs/performance.md`). So a command-line run:

* takes the count the user gave (`--threads N`, else the `FASTGEN_THREADS` environment
  variable, else `OMP_NUM_THREADS`) and keeps it;
* otherwise (`auto`, the default) starts with the cores of its CPU set that other processes left
  idle over a short window (at least 1), and keeps re-choosing while it runs (`ThreadGovernor`,
  at most once a second, between denoiser batches): when other processes take cores it steps
  down, when they leave it steps back up.

Passive waiting (`OMP_WAIT_POLICY=PASSIVE`) also stops the collapse but costs 1.4-1.8x on a quiet
machine here, where a small denoiser's ops are too short to wake sleeping threads for; it is
left to the user. The choice, its reason and every change are recorded (`thread_report`).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

ENV_THREADS = "FASTGEN_THREADS"


@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    source: str  # "--threads", FASTGEN_THREADS, OMP_NUM_THREADS, "idle cores" or "all cores"
    usable_cores: int
    idle_cores: float | None = None

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"threads": self.threads, "source": self.source, "usable_cores": self.usable_cores}
        if self.idle_cores is not None:
            out["idle_cores"] = round(self.idle_cores, 2)
        return out


def usable_cores() -> int:
    """The cores this process may run on (its affinity set), not all of the machine's."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _cpu_times(cores: set[int]) -> dict[int, tuple[int, int]] | None:
    """Per core in `cores`: (busy, total) jiffies from /proc/stat; None where it cannot be read."""
    try:
        with open("/proc/stat") as handle:
            lines = handle.readlines()
    except OSError:
        return None
    times = {}
    for line in lines:
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu" or not name[3:].isdigit():
            continue
        core = int(name[3:])
        if core in cores:
            values = [int(v) for v in fields[:8]]
            idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
            times[core] = (sum(values) - idle, sum(values))
    return times or None


def idle_cores(window_s: float = 0.25) -> float | None:
    """How many of this process's cores other processes left idle over `window_s` seconds (this
    process is idle while it waits), or None off Linux."""
    try:
        cores = set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None
    before = _cpu_times(cores)
    if before is None:
        return None
    time.sleep(window_s)
    after = _cpu_times(cores)
    if after is None:
        return None
    idle = 0.0
    for core, (busy_then, total_then) in before.items():
        busy_now, total_now = after.get(core, (busy_then, total_then))
        elapsed = total_now - total_then
        if elapsed > 0:
            idle += 1.0 - min(max((busy_now - busy_then) / elapsed, 0.0), 1.0)
        else:  # no tick counted on this core in the window: nothing ran on it
            idle += 1.0
    return idle


def _positive_int(text: str, where: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{where} must be a whole number of threads >= 1 or 'auto', got {text!r}")
    return value


def choose_threads(requested: int | str | None = None) -> ThreadChoice:
    """The thread count for this run: `requested` (an int, or 'auto'/None), else FASTGEN_THREADS,
    else OMP_NUM_THREADS, else the idle cores (rounded, at least 1)."""
    cores = usable_cores()
    if requested not in (None, "auto"):
        return ThreadChoice(_positive_int(str(requested), "--threads"), "--threads", cores)
    from_env = os.environ.get(ENV_THREADS, "").strip()
    if from_env and from_env != "auto":
        return ThreadChoice(_positive_int(from_env, ENV_THREADS), ENV_THREADS, cores)
    if requested is None and os.environ.get("OMP_NUM_THREADS", "").strip().isdigit():
        return ThreadChoice(max(1, int(os.environ["OMP_NUM_THREADS"])), "OMP_NUM_THREADS", cores)
    idle = idle_cores()
    if idle is None:
        return ThreadChoice(cores, "all cores", cores)
    return ThreadChoice(max(1, min(cores, int(idle + 0.5))), "idle cores", cores, idle)


class ThreadGovernor:
    """Re-chooses torch's thread count while a run goes, from how much of this process's cores
    other processes keep busy: their share is the cores' busy time (from /proc/stat) less this
    process's own CPU time. It steps down when the free cores fall half a core below the threads
    it runs, and up when they rise most of a core above; `tick` is called between batches from the
    thread that runs torch, whose OpenMP team size `torch.set_num_threads` sets."""

    def __init__(self, choice: ThreadChoice, *, interval_s: float = 1.0):
        self.threads = choice.threads
        self.cores = choice.usable_cores
        self.interval_s = interval_s
        self.changes: list[dict[str, float]] = []
        self.lowest = self.highest = choice.threads
        self._started = time.monotonic()
        self._cores_set = set(os.sched_getaffinity(0))
        self._ticks_per_s = os.sysconf("SC_CLK_TCK")
        self._last = self._reading()

    def _reading(self) -> tuple[float, float, float] | None:
        times = _cpu_times(self._cores_set)
        if times is None:
            return None
        own = os.times()
        return time.monotonic(), sum(busy for busy, _ in times.values()) / self._ticks_per_s, own.user + own.system

    def tick(self) -> None:
        if self._last is None or time.monotonic() - self._last[0] < self.interval_s:
            return
        now = self._reading()
        if now is None:
            return
        wall = now[0] - self._last[0]
        others = max(0.0, (now[1] - self._last[1]) - (now[2] - self._last[2])) / wall
        self._last = now
        free = self.cores - others
        if free < self.threads - 0.5:
            wanted = max(1, int(free + 0.5))
        elif free > self.threads + 0.7:
            wanted = min(self.cores, int(free + 0.3))
        else:
            return
        if wanted != self.threads:
            import torch

            torch.set_num_threads(wanted)
            self.changes.append(
                {"at_s": round(now[0] - self._started, 2), "threads": wanted, "other_cores": round(others, 2)}
            )
            self.threads = wanted
            self.lowest, self.highest = min(self.lowest, wanted), max(self.highest, wanted)


_governor: ThreadGovernor | None = None
_choice: ThreadChoice | None = None


def apply_threads(choice: ThreadChoice, *, govern: bool | None = None) -> ThreadChoice:
    """Set torch's thread count to `choice`; with `govern` (default: when the count was chosen
    from idle cores) keep re-choosing it between batches (`between_batches`)."""
    import torch

    global _governor, _choice
    torch.set_num_threads(choice.threads)
    _choice = choice
    govern = choice.source == "idle cores" if govern is None else govern
    _governor = ThreadGovernor(choice) if govern and _cpu_times(set(os.sched_getaffinity(0))) else None
    return choice


def between_batches() -> None:
    """The engine's hook: a no-op unless a command line run governs its threads."""
    if _governor is not None:
        _governor.tick()


def thread_report() -> dict[str, object] | None:
    """What this run chose and changed, for its report; None when no command chose."""
    if _choice is None:
        return None
    report = _choice.as_dict()
    if _governor is not None:
        report.update(
            governed=True, lowest=_governor.lowest, highest=_governor.highest, final=_governor.threads,
            changes=_governor.changes[:50],
        )  # fmt: skip
    return report
