"""How a trial child that died without a result is recorded: by its signal's name and, for
SIGKILL (what the kernel's OOM killer sends, and ``kill -9``), by whether the OOM killer ran
while the child did (the kernel's count in /proc/vmstat), rather than a guess at out of memory."""

from __future__ import annotations

from harness.launchers.local import death_reason


def test_a_death_is_told_by_its_signal_and_what_the_kernel_counted() -> None:
    assert death_reason(-9, 4, 5) == (
        "child process died from SIGKILL (Killed): out of memory "
        "(the kernel's OOM killer killed 1 meanwhile)"
    )
    assert death_reason(-9, 4, 4) == (
        "child process died from SIGKILL (Killed): a kill -9 from a process, not out of memory "
        "(no OOM kill meanwhile)"
    )
    assert death_reason(-9, None, None).endswith("(this system does not count OOM kills)")
    assert death_reason(-11, 0, 0) == "child process died from SIGSEGV (Segmentation fault)"
    assert death_reason(1, 0, 0) == "child process exited with code 1 without a result"
