"""The training log line: time per step, throughput and ETA leave out the first step.

A fake clock stands in for time.perf_counter, so the test decides how long each step
takes and the numbers on the line can be checked exactly.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from ml_playground.train import reporting

TOKENS_PER_STEP = 100


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def logged_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    *,
    first_step_s: float,
    later_step_s: float,
    steps: int,
) -> str:
    clock = FakeClock()
    # reporting reads time.perf_counter through the time module, so the module's attribute
    # is what must change; monkeypatch puts it back after the test.
    monkeypatch.setattr(time, "perf_counter", clock)
    with reporting.RunReporter(
        tmp_path,
        total_steps=100,
        start_step=0,
        eval_interval=1000,
        tokens_per_step=TOKENS_PER_STEP,
        tensorboard=False,
    ) as reporter:
        for step in range(1, steps + 1):
            clock.now += first_step_s if step == 1 else later_step_s
            reporter.advance()
        reporter.log_step(steps, loss=1.0, lr=1e-3, grad_norm=None)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step")]
    return lines[-1]


def test_a_slow_first_step_stays_out_of_time_per_step_and_eta(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    line = logged_line(
        tmp_path, monkeypatch, capsys, first_step_s=120.0, later_step_s=0.5, steps=11
    )

    assert "step  11/100" in line
    assert "500.0 ms/step" in line
    assert "200 tok/s" in line
    # 89 steps left at 0.5 s, plus the final evaluation (none measured yet: steps only)
    assert re.search(r"elapsed 2m05s \| eta 44s$", line), line


def test_with_only_the_first_step_to_speak_of_the_line_times_that_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    line = logged_line(tmp_path, monkeypatch, capsys, first_step_s=2.0, later_step_s=0.5, steps=1)

    assert "2000.0 ms/step" in line
    assert line.endswith("eta ?"), line
