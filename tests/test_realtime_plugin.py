"""The ``realtime`` plugin (tests/realtime.py): reruns only failures on a measured starved machine, keeps the
last outcome, and its watcher measures a stall it is given."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.realtime import MachineWatch

ROOT = Path(__file__).resolve().parent.parent

FLAKY = """
import pytest
from pathlib import Path

@pytest.mark.realtime
def test_flaky(tmp_path_factory):
    runs = Path(__file__).with_name("runs")
    n = int(runs.read_text()) + 1 if runs.exists() else 1
    runs.write_text(str(n))
    assert n >= {passes_on}, f"attempt {{n}}"
"""


def run_inner(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, passes_on: int,
              starved: bool, severe: bool = False) -> pytest.RunResult:
    # the thresholds, not the measurement, decide here: every window counts as starved (or beyond
    # measurement), or none does
    steal = "-1.0" if starved else "math.inf"
    severe_steal = "-1.0" if severe else "math.inf"
    pytester.makeconftest(f"""
import math
import tests.realtime as r
r.STEAL_SHARE = {steal}
r.STALLED_SHARE = math.inf
r.LONGEST_MS = math.inf
r.SEVERE_STEAL_SHARE = {severe_steal}
r.SEVERE_STALLED_SHARE = math.inf
""")
    pytester.makepyfile(FLAKY.format(passes_on=passes_on))
    monkeypatch.setenv("PYTHONPATH", f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    return pytester.runpytest_subprocess("-p", "tests.realtime", "-p", "no:cacheprovider", "-rA")


def test_a_failure_on_a_starved_machine_is_run_again_and_the_pass_is_reported(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    result = run_inner(pytester, monkeypatch, passes_on=2, starved=True)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*run again after failing on a starved machine*",
                                 "*test_flaky: passed on attempt 2*",
                                 "*attempt 1 failed*attempt 1*starved*"])
    assert (pytester.path / "runs").read_text() == "2"


def test_a_failure_on_every_attempt_fails_with_each_attempts_measurement(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    result = run_inner(pytester, monkeypatch, passes_on=99, starved=True)
    result.assert_outcomes(failed=1)
    assert (pytester.path / "runs").read_text() == "3"
    result.stdout.fnmatch_lines(["*realtime: attempts*", "*attempt 1 failed*", "*attempt 2 failed*",
                                 "*attempt 3 failed*"])


def test_a_failure_on_every_attempt_beyond_measurement_is_a_skip_that_says_so(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    result = run_inner(pytester, monkeypatch, passes_on=99, starved=True, severe=True)
    result.assert_outcomes(skipped=1)
    assert (pytester.path / "runs").read_text() == "3"
    result.stdout.fnmatch_lines(["*NOT MEASURED*", "*test_flaky*",
                                 "*SKIPPED*not measurable on this machine: failed on all 3 attempts*attempt 3 *"])


def test_a_failure_on_a_machine_that_was_not_starved_is_not_run_again(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    result = run_inner(pytester, monkeypatch, passes_on=2, starved=False)
    result.assert_outcomes(failed=1)
    assert (pytester.path / "runs").read_text() == "1"
    result.stdout.fnmatch_lines(["*attempt 1 failed*not starved*"])


def test_the_watcher_measures_a_stall_it_is_put_through_in_a_past_window() -> None:
    watch = MachineWatch()
    try:
        time.sleep(0.5)  # the watcher is running
        before = (time.time() * 1000.0 - 300.0, time.time() * 1000.0)
        start_ms = time.time() * 1000.0
        os.kill(watch._proc.pid, signal.SIGSTOP)
        time.sleep(0.4)
        os.kill(watch._proc.pid, signal.SIGCONT)
        stopped = (start_ms, time.time() * 1000.0)
        time.sleep(1.0)  # judged afterwards, as a module fixture's run is
        got = watch.window([stopped])
        earlier = watch.window([before])
    finally:
        watch.close()
    # the 400 ms it was stopped, give or take the machine's own wake-up delays
    assert 350 <= got.longest_ms <= 1000, got
    assert got.starved, got
    assert earlier.longest_ms < 350, earlier  # the window before it does not get the stall
    assert 0.0 <= got.steal_share <= 1.0 and got.wall_ms > 390
