"""Tell whether the process that left a temporary file behind is still running.

Temporary files and folders that hold Braze events are named after their process (its pid namespace
and pid), so that a later task can remove those of a task that was killed before it could.
"""

from __future__ import annotations

import os


def pid_namespace() -> int:
    """This process's pid namespace (the inode of ``/proc/self/ns/pid``), or 0 where there is none."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:  # not Linux: one namespace
        return 0


def owner_tag() -> str:
    """``<namespace>-<pid>``, to put in the name of a temporary file or folder."""
    return f"{pid_namespace()}-{os.getpid()}"


def left_by_dead_process(name: str, prefix: str) -> bool:
    """Whether ``name`` is ``prefix<namespace>-<pid>-...`` for a process of this pid namespace that is
    gone. A name of another namespace (another container sharing the folder) is never judged."""
    if not name.startswith(prefix):
        return False
    owner = name[len(prefix) :].split("-")
    if len(owner) < 3 or not (owner[0].isdigit() and owner[1].isdigit()):
        return False
    return int(owner[0]) == pid_namespace() and not _running(int(owner[1]))


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
