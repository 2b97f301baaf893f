"""Children that die with their supervisor, however it dies (SIGTERM, Ctrl-C, SIGKILL, a crash).

Two mechanisms, because neither alone reaches every process of ours:

- **Parent-death signal** (:func:`die_with_parent`, a ``preexec_fn``): the kernel sends the direct child
  SIGTERM when the process that started it dies (Linux ``prctl(PR_SET_PDEATHSIG)``). It reaches only
  that one process: it is not inherited, and nobody can install it in the processes a Java program
  starts. TorchServe is a Python launcher that starts a JVM that starts the Python model workers; the
  launcher does not pass SIGTERM on, so a launcher killed this way leaves the JVM and its workers
  running, the JVM re-parented to init (measured with TorchServe 0.12: the model workers, for their
  part, exit about 2 s after their JVM dies, when its socket closes). The same holds for any child's
  own children that ignore their parent's death.
- **A watchdog** (:class:`Lifeline`): a small process of its own (``python -m serving.lifeline``), in
  its own session, that holds the read end of a pipe whose only write end is the supervisor's. The
  supervisor tells it, through the pipe, each process group it starts (every supervised child is started
  in a new session, so its group holds its whole tree: JVM, model workers, gunicorn's workers, the job
  cluster's processes). When the supervisor dies, however it dies, the kernel closes the pipe; the
  watchdog reads end-of-file, sends SIGTERM to every group still registered, and SIGKILL after
  ``grace_s`` to whatever is left. A supervisor that stops its children itself releases their groups
  as it does, and closing the lifeline then ends the watchdog without a signal sent.

A group is registered right after ``Popen`` returns; the parent-death signal covers the microseconds
between the two (a launcher killed then has not started its JVM yet). The parent-death signal fires when
the *thread* that started the child ends: start supervised children from the main thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

__all__ = ["DEFAULT_GRACE_S", "Lifeline", "die_with_parent", "group_alive", "kill_groups", "pid_alive"]

PR_SET_PDEATHSIG = 1
DEFAULT_GRACE_S = 10.0


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None]:
    """A ``preexec_fn``: the child gets ``sig`` when its parent dies (also if it died before the exec)."""
    parent = os.getpid()

    def preexec() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:  # the parent died between fork and prctl
            os.kill(os.getpid(), sig)

    return preexec


def pid_alive(pid: int) -> bool:
    """True while process ``pid`` runs (a zombie counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[-1][:1] != "Z"
    except OSError:
        return True


def group_alive(pgid: int) -> bool:
    """True while a process (other than a zombie) is in process group ``pgid``."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(") ", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def kill_groups(pgids: set[int] | list[int], grace_s: float = DEFAULT_GRACE_S) -> list[int]:
    """SIGTERM to each group, SIGKILL after ``grace_s`` to those with a live member; the groups that
    had to be killed."""
    live = [g for g in pgids if group_alive(g)]
    for pgid in live:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while live and time.monotonic() < deadline:
        for pgid in list(live):  # reap our own children so that they do not linger as zombies
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pgid, os.WNOHANG)
        live = [g for g in live if group_alive(g)]
        time.sleep(0.1)
    for pgid in live:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
    return live


class Lifeline:
    """The watchdog of one supervisor (see the module docstring). ``watch(pgid)`` after starting a
    child in a new session, ``release(pgid)`` once the supervisor has stopped it itself, ``close()`` at
    the end."""

    def __init__(self, grace_s: float = DEFAULT_GRACE_S) -> None:
        read_end, self._write_end = os.pipe()  # not inheritable (PEP 446): no other child holds the write end
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "serving.lifeline", str(read_end), str(grace_s)],
                pass_fds=[read_end],
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # outside the terminal's group: a Ctrl-C does not reach it
                cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
            )
        finally:
            os.close(read_end)

    def _send(self, line: str) -> None:
        os.write(self._write_end, f"{line}\n".encode())

    def watch(self, pgid: int) -> None:
        self._send(f"+{pgid}")

    def release(self, pgid: int) -> None:
        self._send(f"-{pgid}")

    def close(self) -> None:
        """Ends the watchdog, which first stops every group still registered (none, when the supervisor
        stopped and released its children itself)."""
        with contextlib.suppress(OSError):
            os.close(self._write_end)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=DEFAULT_GRACE_S + 5)


def _watch(read_fd: int, grace_s: float) -> int:
    """The watchdog's loop: keep the registered groups until end-of-file, then kill what is left."""
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)  # it ends when its supervisor does, not before
    groups: set[int] = set()
    with os.fdopen(read_fd, "rb", buffering=0) as pipe:
        buffer = b""
        while chunk := pipe.read(4096):
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for raw in lines:
                line = raw.decode().strip()
                if line[:1] == "+":
                    groups.add(int(line[1:]))
                elif line[:1] == "-":
                    groups.discard(int(line[1:]))
    groups = {g for g in groups if group_alive(g)}
    if groups:
        print(f"lifeline: the supervisor is gone; stopping process groups {sorted(groups)}", file=sys.stderr)
        killed = kill_groups(groups, grace_s)
        if killed:
            print(f"lifeline: killed {killed} after {grace_s:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(_watch(int(sys.argv[1]), float(sys.argv[2])))
