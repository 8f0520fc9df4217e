"""Advisory file locks (fcntl) that make two processes on one artifacts root safe.

    with locks.hold(store.lock("run", run_id), f"run {run_id} is being trained"):  # or: fail
    with locks.hold(store.lock("table", name), ..., wait=True):  # or: wait for the holder

The lock file holds the holder's pid and host, so the process that is refused can say who has
it ("run X is being trained by pid 123 on node7"). The kernel releases an fcntl lock when its
holder dies, however it dies (kill -9 included), so a stale lock file from a dead pid is simply
taken over; a holder that finishes removes its lock file (a waiter then locks a fresh one).
Locks belong to an open file description: the same process taking a lock it already holds
(another thread, a nested call) is refused as a second writer would be.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from probe.errors import ProbeError

HOST = socket.gethostname()


def holder(path: str | os.PathLike) -> str:
    """"pid N on HOST" as the lock file at `path` names its holder ("another process" when it
    cannot be read)."""
    try:
        pid, host = Path(path).read_text().split()[:2]
        return f"pid {int(pid)} on {host}"
    except (OSError, ValueError):
        return "another process"


@contextlib.contextmanager
def hold(path: str | os.PathLike, busy: str, wait: bool = False, poll: float = 0.2,
         log: Callable[[str], None] | None = None) -> Iterator[Path]:
    """Hold an exclusive lock on `path` for the block.

    Held by another process: `wait=False` raises ProbeError("<busy> by pid N on HOST"); with
    `wait=True` it logs that once and waits for the holder to finish (or die)."""
    path = Path(path)
    told = False
    while True:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if not wait:
                raise ProbeError(f"{busy} by {holder(path)}; wait for it to finish "
                                 "(or stop it) and rerun") from None
            if not told and log is not None:
                log(f"{busy} by {holder(path)}: waiting for it")
                told = True
            time.sleep(poll)
            continue
        try:  # the holder before us may have removed the file we locked: lock the new one
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {HOST}\n".encode(), 0)
        except OSError:  # a full disk: the lock holds all the same, its holder goes unnamed
            pass
        yield path
    finally:
        try:
            path.unlink()  # while still held, so nothing is left behind
        except FileNotFoundError:
            pass
        os.close(fd)
