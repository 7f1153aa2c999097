"""The allocator policy: glibc takes the settings, a trim gives stranded heap back, and when the trimmer trims.

The trimmer's decision is tested with made-up resident sizes and a made-up clock, so nothing waits; one test
strands real heap memory in this process and watches ``malloc_trim`` return it.
"""

from __future__ import annotations

import ctypes
import platform
import sys
import threading

import pytest

from v2server import memory
from v2server.memory import IdleTrimmer, keep_freed_memory, release_free_memory, resident_bytes

MiB = 1 << 20
glibc_only = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc's allocator only"
)


@glibc_only
def test_glibc_takes_the_settings() -> None:
    assert keep_freed_memory(trim_when_idle=False) is True


@glibc_only
def test_the_trimmer_starts_once(monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[IdleTrimmer] = []
    monkeypatch.setattr(memory, "_trimmer", None)
    monkeypatch.setattr(memory, "_spawn", started.append)  # no thread polling this test process
    assert memory.start_trimmer() and memory.start_trimmer()
    assert started == [memory._trimmer]


@glibc_only
def test_a_trim_gives_back_the_heap_memory_the_settings_keep() -> None:
    keep_freed_memory(trim_when_idle=False)  # 1 MiB blocks come from the heap, and freed ones stay mapped
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    blocks = [libc.malloc(MiB) for _ in range(96)]
    live = libc.malloc(64)  # allocated after them, so it may well sit above them and pin the heap's top
    for block in blocks:
        ctypes.memset(block, 1, MiB)
    for block in blocks:
        libc.free(block)
    kept = resident_bytes()
    assert release_free_memory()
    assert resident_bytes() < kept - 48 * MiB
    libc.free(live)


class Fake:
    """Resident sizes to report, a clock, and the trims asked for (a trim brings resident down to ``after``)."""

    def __init__(self, after: int = 100 * MiB) -> None:
        self.resident = 100 * MiB
        self.now = 0.0
        self.trims = 0
        self.after = after

    def trim(self) -> None:
        self.trims += 1
        self.resident = self.after

    def trimmer(self, **kwargs: float) -> IdleTrimmer:
        return IdleTrimmer(self.trim, lambda: self.resident, retain=64 * MiB, min_interval=5.0,
                           window=60, regrowth=16 * MiB, clock=lambda: self.now, **kwargs)  # fmt: skip

    def polls(self, trimmer: IdleTrimmer, *resident_mib: int) -> list[bool]:
        results = []
        for value in resident_mib:
            self.resident = value * MiB
            self.now += 1.0
            results.append(trimmer.poll())
        return results


def test_no_trim_while_the_footprint_stays_within_the_retained_margin() -> None:
    fake = Fake()
    trimmer = fake.trimmer()
    assert fake.polls(trimmer, 100, 150, 164, 164, 120, 164) == [False] * 6


def test_a_burst_is_trimmed_once_it_stops_growing() -> None:
    fake = Fake()
    trimmer = fake.trimmer()
    assert fake.polls(trimmer, 100, 400, 900, 1200, 1100) == [False, False, False, False, True]
    assert fake.resident == 100 * MiB and fake.trims == 1
    assert fake.polls(trimmer, 100, 100, 100) == [False] * 3  # idle again: nothing more to do


def test_trims_are_spaced_and_not_repeated_without_regrowth() -> None:
    fake = Fake(after=300 * MiB)  # what a trim leaves is in use: above the line for good
    trimmer = fake.trimmer()
    assert fake.polls(trimmer, 100, 800, 800) == [False, False, True]
    assert fake.polls(trimmer, 300, 300, 310, 310) == [False] * 4  # not regrown by 16 MiB: nothing to return
    assert fake.polls(trimmer, 700, 700) == [False, True]  # regrown, 5 s after the last trim
    assert fake.polls(trimmer, 900, 900) == [False, False]  # regrown again, but only 2 s later
    assert fake.polls(trimmer, 900, 900, 900) == [False, False, True]


def test_the_idle_level_is_the_low_of_the_window() -> None:
    fake = Fake(after=300 * MiB)
    trimmer = IdleTrimmer(fake.trim, lambda: fake.resident, retain=64 * MiB, min_interval=0.0, window=3,
                          regrowth=16 * MiB, clock=lambda: fake.now)  # fmt: skip
    # a model loaded: 300 MiB for good; once the window has only readings at that level, it is the idle level
    assert fake.polls(trimmer, 100, 300, 300, 300, 300, 360, 360) == [False, False, True] + [False] * 4
    assert fake.trims == 1


def test_a_failing_poll_stops_the_trimmer_without_raising(caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> int:
        raise OSError("no /proc")

    trimmer = IdleTrimmer(resident=broken)
    trimmer.run(threading.Event(), every=0.0)  # returns: the error is logged, the thread would end
    assert trimmer.trims == 0 and "the trimmer stops" in caplog.text
