"""Ctrl-C and SIGTERM stop a run within seconds, in one line, whatever it is doing.

Python's own handling of SIGINT is not enough for a long run:

- `KeyboardInterrupt` is raised at the next bytecode of the main thread, and
  raised inside a garbage-collector callback (JAX registers one, which runs at
  every collection), a `__del__` or a weakref callback, it is printed as
  "Exception ignored" and dropped: the run trains on as if nothing happened.
- While a script still imports TensorFlow, none of our code is there to catch
  it: a traceback, and death by signal.
- SIGTERM (`kill`, Slurm, Kubernetes) kills at once by default, saying nothing.
- A main thread blocked in C (a collective waiting for a lost worker) runs no
  Python handler at all.

So a training script calls `install()` before its first slow import: both
signals raise `StopRequested`, and a watchdog thread raises it again every
`RETRY_S` until our code has `received` it. If the process is still alive
`GRACE_S` after the signal, the watchdog prints the one line itself and exits
with status 130, as an orderly stop does. Importing this module does nothing:
it uses the standard library and `common.errors` only, so that it loads first.
"""

from __future__ import annotations

import _thread
import contextlib
import faulthandler
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator

from common.errors import StopRequested

EXIT_STATUS = 130  # The shell's 128 + SIGINT; SIGTERM is handled as Ctrl-C.
GRACE_S = 8.0  # Longest wait from the signal to the exit, slow clean-up included.
RETRY_S = 0.5
CAUSES = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}


def nothing_saved(cause: str) -> str:
    """The message of a stop before the run folder is opened."""
    return f"Stopped by {cause} while starting: nothing is saved, nothing to resume."


class _Stop:
    """The process's one stop: which signal, and how far its handling has got."""

    def __init__(self):
        self.signum: int | None = None
        self.exit_at_once = False  # Skip Python's finalization (`handled`).
        self.received = False  # Caught by our code: raise no more.
        self.exiting = False  # The message is printed; the process is ending.
        self.deferring = 0  # Blocks that must finish first (`deferred`).
        self.describe: Callable[[str], str] = nothing_saved
        self.lock = threading.Lock()


_owns_process = False  # Set by `install`: a stop ends this process.
_stop = _Stop()  # Replaced by a fresh one when a new run starts (`handled`).


def install() -> None:
    """Handle SIGINT and SIGTERM as above, for the rest of the process.

    Call it first thing in a script's `if __name__ == "__main__":` path; an
    uncaught `StopRequested` (one that arrives during the imports) then ends
    in the one line too, and one dropped in a callback prints nothing (the
    watchdog raises it again). SIGUSR1 prints every thread's stack, to see
    where a run that does not stop is.
    """
    global _owns_process
    _owns_process = True
    for signum in CAUSES:
        signal.signal(signum, _on_signal)
    sys.excepthook = _one_line_for_stops(sys.excepthook)
    sys.unraisablehook = _quiet_for_stops(sys.unraisablehook)
    if hasattr(signal, "SIGUSR1"):  # `kill -USR1 PID`: where is every thread?
        faulthandler.register(signal.SIGUSR1, all_threads=True)


@contextlib.contextmanager
def handled(
    describe: Callable[[str], str], exit_at_once: bool = False
) -> Iterator[None]:
    """Handle both signals in this block, with `describe(cause)` saying what is saved.

    `describe` gives the line the watchdog prints if it must end the process
    itself. The previous handlers come back afterwards (a test calls `main`
    in-process). Outside the main thread, signals cannot be handled: nothing
    changes.

    `exit_at_once`: once the line is printed, end the process without
    Python's finalization. For a worker of a multi-worker run that writes
    nothing: its finalization waits in TensorFlow's runtime for the other
    workers, which wait in a collective for it, and the watchdog cannot help
    (Python stops its threads while it finalizes). Measured: 4 of 20 pairs
    stopped by SIGTERM together ended only at the chief's 8 s deadline.
    """
    global _stop
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if _stop.received:  # An earlier run in this process has handled its stop.
        _stop = _Stop()
    previous = {signum: signal.signal(signum, _on_signal) for signum in CAUSES}
    _stop.describe, _stop.exit_at_once = describe, exit_at_once
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold a stop back until this block ends: what it writes is written whole.

    A checkpoint cut off in the middle of its write is a `.keras` file that
    no longer loads (seen on the GPU: `best.keras` of a run stopped by its
    time budget). A stop that arrives here is raised when the block ends, and
    the watchdog's deadline waits for the block.
    """
    _stop.deferring += 1
    try:
        yield
    finally:
        _stop.deferring -= 1
    if _stop.signum is not None and not _stop.received and not _stop.deferring:
        raise StopRequested(CAUSES[_stop.signum])


def message(error: KeyboardInterrupt) -> str:
    """Mark the stop as caught (no more raising); return its one line.

    The line comes from the `describe` of the innermost `handled` block, so
    it says what this run has saved at this moment.
    """
    _stop.received = True
    return _stop.describe(getattr(error, "cause", "Ctrl-C"))


def stop_behind(error: BaseException) -> KeyboardInterrupt | None:
    """The stop that `error` stands for, or None: `error` itself if it is one.

    A signal's handler runs at the next bytecode, which can lie inside a C++
    call's own error handling: then that call fails with an error of its own
    (seen on the chief of two workers sent SIGTERM together, when the other
    worker's exit failed a collective: pybind11's "MISMATCH of original and
    normalized active exception types", a `RuntimeError`). While a stop is
    requested and not yet received, any error is that stop's doing.
    """
    if isinstance(error, KeyboardInterrupt):
        return error
    if _stop.signum is not None and not _stop.received:
        return StopRequested(CAUSES[_stop.signum])
    return None


def exit_with(message: str) -> None:
    """Print the stop's one line once and raise `SystemExit(130)`.

    If the exit itself hangs (a thread that does not end), the watchdog ends
    the process `GRACE_S` after the signal.
    """
    _stop.received = True
    with _stop.lock:
        if not _stop.exiting:
            _stop.exiting = True
            print(f"\n{message}", file=sys.stderr, flush=True)
    if _stop.exit_at_once and _owns_process:
        sys.stdout.flush()
        os._exit(EXIT_STATUS)
    raise SystemExit(EXIT_STATUS)


def _on_signal(signum: int, frame) -> None:
    """Raise the stop until it is received; the first signal starts the watchdog."""
    if _stop.signum is None:
        _stop.signum = signum
        watchdog = threading.Thread(target=_watch, args=(_stop,), daemon=True)
        watchdog.start()
    if not _stop.received and not _stop.deferring:
        raise StopRequested(CAUSES[_stop.signum])


def _watch(stop: _Stop) -> None:
    """Raise the stop again while it is lost; end the process at the deadline.

    Without `install` (a test calling `main`), a received stop ends the
    watch: the caller carries on, and the process is not ours to end.
    """
    deadline = time.monotonic() + GRACE_S
    while time.monotonic() < deadline or stop.deferring:
        time.sleep(RETRY_S)
        if stop.received and not _owns_process:
            return
        if not stop.received:
            _thread.interrupt_main(stop.signum)  # Runs `_on_signal` again.
    _force_exit(stop)


def _force_exit(stop: _Stop) -> None:
    """Print the line unless it is printed, and end the process with status 130."""
    with stop.lock:
        if not stop.exiting:
            stop.exiting = True
            line = stop.describe(CAUSES.get(stop.signum, "Ctrl-C"))
            print(f"\n{line}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(EXIT_STATUS)


def _one_line_for_stops(excepthook):
    """`sys.excepthook` that prints an uncaught stop as its one line, exit 130.

    Python would print the traceback and then kill itself with SIGINT.
    """

    def hook(kind, error, traceback) -> None:
        if not issubclass(kind, KeyboardInterrupt):
            excepthook(kind, error, traceback)
            return
        _stop.received = True
        _force_exit(_stop)

    return hook


def _quiet_for_stops(unraisablehook):
    """`sys.unraisablehook` that says nothing of a dropped stop: it is raised again."""

    def hook(unraisable) -> None:
        if not isinstance(unraisable.exc_value, StopRequested):
            unraisablehook(unraisable)

    return hook
