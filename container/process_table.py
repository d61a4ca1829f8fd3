"""Who is in a process group, as /proc shows it, and making them all go.

MMS's Java starts one Python listener per model, which forks the workers; on SIGTERM Java
kills the listeners, not their forks. So Java leads a process group of its own (every worker
inherits it) and stopping checks /proc until the group is empty.
"""

import os
import signal
import time
from collections.abc import Callable


def group_members(pgid: int) -> dict[int, tuple[int, tuple[str, ...]]]:
    """Every live process in group ``pgid``: pid -> (ppid, cmdline). Zombies (no memory, no
    code) are reaped on the way and left out."""
    members = {}
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmdline = tuple(part.decode(errors="replace") for part in f.read().split(b"\0") if part)
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        # The command name is in parentheses and may itself hold spaces or ')'.
        state, ppid, group = stat[stat.rindex(")") + 2:].split()[:3]
        if int(group) != pgid:
            continue
        if state == "Z":
            reap(int(name))
        else:
            members[int(name)] = (int(ppid), cmdline)
    return members


def model_workers(pgid: int, mms_name: str) -> list[int]:
    """Processes in MMS's group ``pgid`` serving ``mms_name``: its listener (Java's child) and
    the workers forked from it; not what a worker forks in turn (it bears its parent's command
    line until it execs)."""
    named = {}
    for pid, (ppid, args) in group_members(pgid).items():
        if "--model-name" in args and args[args.index("--model-name") + 1:][:1] == (mms_name,):
            named[pid] = ppid
    return [pid for pid, ppid in named.items() if ppid == pgid or named.get(ppid) == pgid]


def reap(pid: int) -> None:
    """Collect ``pid``'s exit status if it is our child (orphans re-parent to PID 1: when we
    run as PID 1 in a container they are ours to reap)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def wait_gone(left: Callable[[], list[int]], timeout_s: float) -> list[int]:
    """Poll ``left()`` until it is empty or ``timeout_s`` has passed; returns its last answer."""
    deadline = time.monotonic() + timeout_s
    while (pids := left()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return pids


def wait_workers_gone(pgid: int, mms_name: str, timeout_s: float, seen: list[int]) -> list[int]:
    """Wait (bounded) until MMS has stopped ``mms_name``'s processes (those running now and
    ``seen``, listed before MMS was asked: one already exiting is no longer listed); SIGKILL
    the ones it left behind (a forked worker whose listener was stopped), and wait for those
    too. Returns the pids killed."""
    pids = set(seen) | set(model_workers(pgid, mms_name))
    left = wait_gone(lambda: sorted(group_members(pgid).keys() & pids), timeout_s)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    wait_gone(lambda: sorted(group_members(pgid).keys() & set(left)), 2)
    return left


def stop_group(pgid: int, grace_s: float) -> list[int]:
    """SIGTERM the whole group, SIGKILL whoever is left after ``grace_s``. Returns the pids
    that survived even SIGKILL (uninterruptible sleep); normally empty."""
    for sig, timeout_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 2)):
        if not group_members(pgid):
            return []
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        left = wait_gone(lambda: list(group_members(pgid)), timeout_s)
    return left
