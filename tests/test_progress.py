"""Progress bars in logs: on a stream that is not a terminal a bar redraws at most every LOG_INTERVAL seconds
(or $IDLS_PROGRESS_INTERVAL), where plain tqdm appends a redraw to the log several times a second.

tqdm's clock is replaced by a fake one that the loops advance, so a simulated 100 s run takes milliseconds
and the counts do not depend on the machine's speed.
"""

from __future__ import annotations

import io
import time

import pytest
import tqdm.std
from tqdm.auto import tqdm as plain_tqdm

from idls.progress import INTERVAL_VARIABLE, LOG_INTERVAL, progress_bar

UPDATES = 1_000
STEP_S = 0.1  # fake seconds per update: 1,000 updates span 100 s


class FakeClock:
    """tqdm's ``time()``: starts at the real time (so tqdm's monitor thread, if one runs, sees no lag) and
    moves only when the test advances it."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(tqdm.std, "time", fake)  # bars read it once, when they are made
    monkeypatch.setattr(tqdm.std.tqdm, "monitor_interval", 0)  # no monitor thread with its real clock
    monkeypatch.delenv(INTERVAL_VARIABLE, raising=False)
    return fake


def redraws(make, clock: FakeClock, *, iterate: bool = False, **options) -> str:
    """What a bar from ``make`` writes to a non-terminal stream over UPDATES updates, STEP_S apart."""
    stream = io.StringIO()
    if iterate:
        for _ in make(range(UPDATES), file=stream, desc="fit", leave=False, **options):
            clock.now += STEP_S
    else:
        with make(total=UPDATES, file=stream, desc="fit", leave=False, **options) as bar:
            for _ in range(UPDATES):
                clock.now += STEP_S
                bar.update()
    return stream.getvalue()


@pytest.mark.parametrize("iterate", [False, True], ids=["manual", "iterable"])
def test_a_log_gets_a_few_redraws_where_plain_tqdm_writes_hundreds(clock, iterate):
    ours = redraws(progress_bar, clock, iterate=iterate).count("\r")
    plain = redraws(plain_tqdm, clock, iterate=iterate).count("\r")
    # first state, one redraw per 30 s of the 100 s run, and the clearing at close (two carriage returns)
    assert ours <= 1 + UPDATES * STEP_S / LOG_INTERVAL + 2
    assert plain > 300, "plain tqdm redraws every ~0.1 s: the comparison that shows this test can fail"


def test_the_bar_still_reaches_its_end(clock):
    stream = io.StringIO()
    with progress_bar(total=UPDATES, file=stream, desc="fit", leave=True) as bar:
        for _ in range(UPDATES):
            clock.now += STEP_S
            bar.update()
    last = stream.getvalue().rstrip("\n").split("\r")[-1]
    assert f"100%|##########| {UPDATES}/{UPDATES}" in last


def test_the_environment_variable_sets_the_interval(clock, monkeypatch):
    monkeypatch.setenv(INTERVAL_VARIABLE, "5")
    count = redraws(progress_bar, clock).count("\r")
    assert 100 / 5 - 2 <= count <= 100 / 5 + 4  # one redraw per 5 s of the 100 s run, plus first and close
    monkeypatch.setenv(INTERVAL_VARIABLE, "0.5")
    assert redraws(progress_bar, clock).count("\r") > 150


@pytest.mark.parametrize("value", ["soon", "-1", "nan"])
def test_a_bad_interval_warns_and_keeps_the_default(clock, monkeypatch, value):
    monkeypatch.setenv(INTERVAL_VARIABLE, value)
    with pytest.warns(UserWarning, match=INTERVAL_VARIABLE):
        bar = progress_bar(total=1, file=io.StringIO())
    assert bar.mininterval == LOG_INTERVAL
    bar.close()


@pytest.mark.parametrize("disable", [True, None], ids=["disabled", "tty-only"])
def test_a_disabled_bar_writes_nothing(clock, disable):
    # disable=None is tqdm's "only on a terminal": no bar at all in a log, as before
    assert redraws(progress_bar, clock, disable=disable) == ""
    assert redraws(progress_bar, clock, iterate=True, disable=disable) == ""


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_tqdms_defaults(clock):
    ours, plain = progress_bar(total=1, file=Terminal()), plain_tqdm(total=1, file=Terminal())
    assert (ours.mininterval, ours.maxinterval) == (plain.mininterval, plain.maxinterval)
    ours.close(), plain.close()


def test_an_explicit_interval_wins(clock):
    bar = progress_bar(total=1, file=io.StringIO(), mininterval=2.0)
    assert bar.mininterval == 2.0
    bar.close()
