"""CPU threads: a count the user gives is kept; `auto` starts from the cores other processes leave
idle and steps down and back up as they come and go (`fastgen.cpu_threads`); the demo reports it."""

from __future__ import annotations

import json

import pytest
import torch

from fastgen import cpu_threads
from fastgen.commands.main import main


@pytest.fixture(autouse=True)
def keep_torch_threads(monkeypatch):
    before = torch.get_num_threads()
    for name in (cpu_threads.ENV_THREADS, "OMP_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    yield
    torch.set_num_threads(before)
    monkeypatch.setattr(cpu_threads, "_governor", None)
    monkeypatch.setattr(cpu_threads, "_choice", None)


def test_a_given_count_is_kept_in_order_of_precedence(monkeypatch):
    monkeypatch.setattr(cpu_threads, "idle_cores", lambda: pytest.fail("a given count needs no measurement"))
    assert cpu_threads.choose_threads(3).threads == 3 and cpu_threads.choose_threads(3).source == "--threads"
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    assert (cpu_threads.choose_threads().threads, cpu_threads.choose_threads().source) == (5, "OMP_NUM_THREADS")
    monkeypatch.setenv(cpu_threads.ENV_THREADS, "4")
    assert (cpu_threads.choose_threads().threads, cpu_threads.choose_threads().source) == (4, "FASTGEN_THREADS")
    assert cpu_threads.choose_threads(2).threads == 2  # the flag over the environment
    monkeypatch.setenv(cpu_threads.ENV_THREADS, "zero")
    with pytest.raises(ValueError, match="FASTGEN_THREADS must be a whole number"):
        cpu_threads.choose_threads()


@pytest.mark.parametrize("idle, expected", [(0.2, 1), (0.6, 1), (1.6, 2), (3.7, 4), (9.0, 4)])
def test_auto_uses_the_idle_cores_at_least_one(monkeypatch, idle, expected):
    monkeypatch.setattr(cpu_threads, "usable_cores", lambda: 4)
    monkeypatch.setattr(cpu_threads, "idle_cores", lambda: idle)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # `auto` named on the command line overrides it
    choice = cpu_threads.choose_threads("auto")
    assert (choice.threads, choice.source, choice.idle_cores) == (expected, "idle cores", idle)


def test_idle_cores_sees_a_busy_core():
    """Measured, not mocked: a thread spinning through the window takes most of a core."""
    import threading
    import time

    idle = cpu_threads.idle_cores(window_s=0.05)
    if idle is None:
        pytest.skip("no /proc/stat here")
    stop = time.monotonic() + 0.6

    def spin():
        while time.monotonic() < stop:
            pass

    spinner = threading.Thread(target=spin)
    spinner.start()
    busy = cpu_threads.idle_cores(window_s=0.4)
    spinner.join()
    assert 0 <= busy <= cpu_threads.usable_cores() - 0.6


def scripted(readings):
    """A governor whose readings (time, busy seconds of its cores, own CPU seconds) are given."""
    choice = cpu_threads.ThreadChoice(2, "idle cores", 2, 2.0)
    governor = cpu_threads.ThreadGovernor(choice, interval_s=0.0)
    feed = iter(readings)
    governor._reading = lambda: next(feed)
    governor._last = governor._reading()
    return governor


def test_the_governor_steps_down_when_others_take_a_core_and_back_up_when_they_leave():
    torch.set_num_threads(2)
    # 1 s: the cores were busy 2 s, 1.2 of them this process's: others hold 0.8 of a core
    # 2 s: busy 1.9 s, 1.0 ours: others 0.9, still one thread
    # 3 s: busy 1.0 s, all ours: the other process left, back to two
    governor = scripted([(0.0, 0.0, 0.0), (1.0, 2.0, 1.2), (2.0, 3.9, 2.2), (3.0, 4.9, 3.2)])
    governor.tick()
    assert governor.threads == 1 and torch.get_num_threads() == 1
    governor.tick()
    assert governor.threads == 1 and len(governor.changes) == 1
    governor.tick()
    assert governor.threads == 2 and torch.get_num_threads() == 2
    assert [c["threads"] for c in governor.changes] == [1, 2] and governor.changes[0]["other_cores"] == 0.8
    assert (governor.lowest, governor.highest) == (1, 2)


def test_the_governor_keeps_its_count_under_small_changes():
    torch.set_num_threads(2)
    governor = scripted([(0.0, 0.0, 0.0), (1.0, 2.0, 1.7), (2.0, 4.0, 3.6)])  # others 0.3, then 0.1
    governor.tick()
    governor.tick()
    assert governor.threads == 2 and governor.changes == []


def test_the_demo_reports_its_threads(capsys):
    assert main(["demo", "--n-images", "3", "--threads", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["threads"] == {"threads": 1, "source": "--threads", "usable_cores": cpu_threads.usable_cores()}
    assert torch.get_num_threads() == 1
