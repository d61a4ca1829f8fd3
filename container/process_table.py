"""The process table as /proc shows it: who is in a process group, and making them all go.

MMS's Java front end starts one Python listener per model, and the listener forks one
process per worker that really runs the model. On SIGTERM Java kills the listeners it
started, not their forks, so "Java exited" does not mean "no workers left". We start Java as the leader
of a new process group (every worker inherits the group) and check /proc for the group.
"""

import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class ProcessInfo:
    pid: int
    ppid: int
    pgid: int
    state: str  # one letter, as in /proc/PID/stat: R, S, D, Z, ...
    cmdline: tuple[str, ...]


def read_process(pid: int) -> ProcessInfo | None:
    """The process ``pid``, or None when it is gone (or vanishes while we read it)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = tuple(part.decode(errors="replace") for part in f.read().split(b"\0") if part)
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name is in parentheses and may itself hold spaces or ')'.
    fields = stat[stat.rindex(")") + 2:].split()
    return ProcessInfo(pid, int(fields[1]), int(fields[2]), fields[0], cmdline)


def all_processes() -> list[ProcessInfo]:
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            info = read_process(int(name))
            if info is not None:
                out.append(info)
    return out


def group_members(pgid: int) -> list[ProcessInfo]:
    """Every live process in group ``pgid`` (zombies, which hold no memory and run no
    code, are reaped on the way and left out)."""
    members = []
    for info in all_processes():
        if info.pgid != pgid:
            continue
        if info.state == "Z":
            reap(info.pid)
            continue
        members.append(info)
    return members


def model_workers(pgid: int, mms_name: str) -> list[int]:
    """Processes in MMS's group ``pgid`` serving ``mms_name``: its Python listener (Java's
    child) and the worker processes forked from it to run the model; not what a worker forks in
    turn (a subprocess bears its parent's command line until it execs)."""
    named = {}
    for info in group_members(pgid):
        args = info.cmdline
        if "--model-name" in args and args[args.index("--model-name") + 1:][:1] == (mms_name,):
            named[info.pid] = info.ppid
    return [pid for pid, ppid in named.items() if ppid == pgid or named.get(ppid) == pgid]


def alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie does not; ours are reaped on the way). An
    exiting process counts as alive until it is gone, though its cmdline is already empty."""
    info = read_process(pid)
    if info is not None and info.state == "Z":
        reap(pid)
    return info is not None and info.state != "Z"


def wait_workers_gone(pgid: int, mms_name: str, timeout_s: float, seen: Iterable[int] = ()) -> list[int]:
    """Wait (bounded) until MMS has stopped ``mms_name``'s processes (those running now and
    ``seen``, listed before MMS was asked: one already exiting is no longer listed); SIGKILL
    the ones it left behind (a forked worker whose listener was stopped), and wait for
    those too. Returns the pids killed."""
    deadline = time.monotonic() + timeout_s
    pids = set(seen) | set(model_workers(pgid, mms_name))
    while (left := [p for p in pids if alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 2
    while any(alive(p) for p in left) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def reap(pid: int) -> None:
    """Collect ``pid``'s exit status if it is our child (orphans re-parent to PID 1: when we
    run as PID 1 in a container they are ours to reap)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def wait_group_gone(pgid: int, timeout_s: float, poll_s: float = 0.1) -> list[ProcessInfo]:
    """Wait until group ``pgid`` is empty; returns whoever is still there at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = group_members(pgid)
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(poll_s)


def stop_group(pgid: int, grace_s: float) -> list[ProcessInfo]:
    """SIGTERM the whole group, SIGKILL whoever is left after ``grace_s``. Returns the
    processes that survived even SIGKILL (uninterruptible sleep); normally empty."""
    if not group_members(pgid):
        return []
    signal_group(pgid, signal.SIGTERM)
    if not wait_group_gone(pgid, grace_s):
        return []
    signal_group(pgid, signal.SIGKILL)
    return wait_group_gone(pgid, 2.0)
