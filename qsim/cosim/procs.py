"""Child processes (Verilator, make, g++, the simulators) that never outlive qsim.

Every build step and every simulator runs through :func:`run_process`, in a process group of
its own (``start_new_session=True``). When qsim stops early (an exception, Ctrl-C, SIGTERM,
interpreter exit) the whole group is terminated (SIGTERM, then SIGKILL after a short grace),
so no compiler or simulator is left writing into the build cache or a work folder.

While a child runs in the main thread and SIGTERM still has its default action, SIGTERM is
turned into ``SystemExit(143)`` so that the ``finally`` blocks that stop the children, release
the cache lock and delete temporary files run before the process exits.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator, Mapping, Sequence

__all__ = ["run_process", "Terminated", "terminate_group", "live_groups", "EXIT_SIGTERM"]

#: Exit status of a qsim process stopped by SIGTERM (the shell convention 128 + 15).
EXIT_SIGTERM = 128 + signal.SIGTERM

#: Seconds a group gets to exit after SIGTERM before it is killed.
GRACE_S = 2.0

_live: dict[int, subprocess.Popen] = {}
_live_lock = threading.Lock()

#: Called with the Popen object right after a child starts (tests interrupt builds here).
on_start: Callable[[subprocess.Popen], None] | None = None


def live_groups() -> list[int]:
    """Process-group ids of the children running now."""
    with _live_lock:
        return sorted(_live)


def _leader_exited(pid: int) -> bool:
    """True once the group leader has exited; it stays a zombie (unreaped) so its pid, the
    group id, cannot be reused while the rest of the group is being killed."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_running(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs (zombies do not count; Linux ``/proc``)."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        return False
    for name in entries:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


def terminate_group(proc: subprocess.Popen, grace_s: float = GRACE_S) -> None:
    """Stop ``proc`` and every process of its group, then reap ``proc``.

    Returns once no process of the group runs any more (a killed process exits when the
    kernel next schedules it, which on a loaded machine takes a moment), or after ``grace_s``
    more seconds at worst.
    """
    if proc.returncode is None:
        _signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while not _leader_exited(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        # Whatever is left (children that ignore SIGTERM or outlived the leader) is killed while
        # the leader is still unreaped, so the group id is certainly still ours.
        _signal_group(proc.pid, signal.SIGKILL)
        deadline = time.monotonic() + grace_s
        while _group_running(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
    proc.wait()


def _terminate_all() -> None:
    with _live_lock:
        procs = list(_live.values())
    for proc in procs:
        terminate_group(proc, grace_s=0.5)


atexit.register(_terminate_all)


class Terminated(SystemExit):
    """Raised in the main thread on SIGTERM while a child runs."""


def _raise_on_sigterm(signum, frame):  # noqa: ARG001 - signal handler signature
    raise Terminated(EXIT_SIGTERM)


@contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    install = (threading.current_thread() is threading.main_thread()
               and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)
    if install:
        signal.signal(signal.SIGTERM, _raise_on_sigterm)
    try:
        yield
    finally:
        if install:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def run_process(cmd: Sequence[str], *, cwd=None, env: Mapping[str, str] | None = None,
                stdout=None, stderr=None, timeout_s: float | None = None) -> int:
    """Run ``cmd`` in its own process group and return its exit status.

    If anything interrupts the wait (KeyboardInterrupt, SIGTERM, an exception, ``timeout_s``),
    the group is terminated before the exception propagates; a timeout raises
    :class:`subprocess.TimeoutExpired`.
    """
    with _sigterm_as_exit():
        proc = subprocess.Popen(list(cmd), cwd=cwd, env=None if env is None else dict(env),
                                stdout=stdout, stderr=stderr, start_new_session=True)
        with _live_lock:
            _live[proc.pid] = proc
        try:
            if on_start is not None:
                on_start(proc)
            return proc.wait(timeout_s)
        except BaseException:
            terminate_group(proc)
            raise
        finally:
            with _live_lock:
                _live.pop(proc.pid, None)
