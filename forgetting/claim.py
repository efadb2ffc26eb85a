"""A run is claimed before it starts, so that two sweeps (or a sweep and ``forgetting.run``) on
one results directory never run it twice nor mix their rows.

The claim is ``RUN_DIR/run.lock``, a small JSON file naming its owner (pid, host, a random
token, when it was taken), created atomically (``O_CREAT | O_EXCL``: of two processes exactly
one creates it) and removed when the run ends. While the run goes, a thread touches the file
every ``HEARTBEAT_S`` seconds. A lock whose owner is gone is taken over: on this host, a pid that
no longer runs (a killed run, a worker that died; the process's start time is recorded too, so a
reused pid is not taken for the owner); on another host (a shared results directory on a
cluster), whose pids cannot be checked from here, a lock whose heartbeat stopped more than
``STALE_S`` seconds ago. On this host a live owner keeps its lock however old its heartbeat (a
stopped process, a laptop asleep). Taking over goes through a second exclusive file
(``run.lock.takeover``), so of two processes that both find the same stale lock only one
replaces it. A lock that cannot be written whole (a full disk) is removed at once.
"""

from __future__ import annotations

import json
import os
import platform
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

from .errors import BadInput

LOCK = "run.lock"
HEARTBEAT_S = 30.0
STALE_S = 300.0  # ten missed heartbeats: the owner's host is down or cut off
HOST = platform.node()


class RunBusy(RuntimeError):
    """The run is claimed by a live owner: a sweep skips it, ``forgetting.run`` refuses with one line."""

    def __init__(self, lock: Path, owner: dict | None):
        who = (f"pid {owner.get('pid')} on host {owner.get('host')} (since {owner.get('since')})"
               if owner else "another process (its lock is being written)")
        super().__init__(f"run {lock.parent.name} is being run by {who}; wait for it to end, or, if that "
                         f"process is gone, remove {lock}")
        self.lock, self.owner = lock, owner


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs on this host (a zombie, killed but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2] != "Z"
    except (OSError, ValueError, IndexError):
        return True


def _start_time(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot, from /proc), or None where that cannot be read."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat[stat.rindex(")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def read_owner(lock: Path) -> tuple[dict | None, float] | None:
    """(owner, seconds since the last heartbeat) of a lock; owner None while it is being written; None: no lock."""
    try:
        mtime = lock.stat().st_mtime
        text = lock.read_text()
    except FileNotFoundError:
        return None
    try:
        owner = json.loads(text)
        owner = owner if isinstance(owner, dict) else None
    except ValueError:
        owner = None
    return owner, time.time() - mtime


def stale_reason(owner: dict | None, age: float) -> str | None:
    """Why a lock's owner is gone, or None when it may still be running."""
    if owner is not None and owner.get("host") == HOST and isinstance(owner.get("pid"), int):
        pid = owner["pid"]
        if pid != os.getpid():
            if not _alive(pid):
                return f"its owner, pid {pid} on this host, is gone"
            started = owner.get("pid_started")
            if isinstance(started, int) and _start_time(pid) not in (None, started):
                return f"its owner, pid {pid} on this host, is gone (the pid now names another process)"
            return None  # a live owner on this host keeps its claim, whatever its heartbeat's age (SIGSTOP, sleep)
    if age > STALE_S:
        return f"its heartbeat stopped {age:.0f} s ago"
    return None


def _create(path: Path, owner: dict) -> bool:
    """Create ``path`` holding ``owner`` if it does not exist; False if it does."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(owner, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
    except BaseException as e:  # a full disk: no empty lock may refuse the next try
        path.unlink(missing_ok=True)
        if isinstance(e, OSError) and not e.filename:
            raise OSError(e.errno, e.strerror or str(e), str(path)) from None
        raise
    return True


class Claim:
    """A held claim on one run directory; ``release()`` (or leaving the ``with`` block) gives it up."""

    def __init__(self, lock: Path, owner: dict, took_over: str | None):
        self.lock, self.owner, self.took_over = lock, owner, took_over
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, name=f"claim {lock.parent.name}", daemon=True)
        self._beat.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.lock)
            except OSError:
                pass

    def held(self) -> bool:
        found = read_owner(self.lock)
        return found is not None and found[0] is not None and found[0].get("token") == self.owner["token"]

    def release(self) -> None:
        self._stop.set()
        if self.held():
            self.lock.unlink(missing_ok=True)

    def __enter__(self) -> "Claim":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def check_free(run_dir: str | Path) -> None:
    """RunBusy when a live owner holds ``run_dir`` now (a cheap look before costly preparation)."""
    lock = Path(run_dir) / LOCK
    found = read_owner(lock)
    if found is not None and stale_reason(*found) is None:
        raise RunBusy(lock, found[0])


def claim(run_dir: str | Path) -> Claim:
    """Claim ``run_dir`` (created if needed) for this process; RunBusy when a live owner holds it.

    A lock that cannot be written (a full disk) is BadInput naming it, and leaves neither the lock
    nor a run directory made for it."""
    run_dir = Path(run_dir)
    made = not run_dir.exists()
    try:
        return _claim(run_dir)
    except OSError as e:
        if made:
            try:
                run_dir.rmdir()
            except OSError:
                pass
        raise BadInput(f"--results-dir: cannot write {e.filename or run_dir / LOCK}: {e.strerror or e}") from None


def _claim(run_dir: Path) -> Claim:
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = run_dir / LOCK
    owner = {"pid": os.getpid(), "host": HOST, "token": uuid.uuid4().hex, "pid_started": _start_time(os.getpid()),
             "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    for _ in range(5):  # each turn either takes the lock or finds a live owner; retries only after races
        if _create(lock, owner):
            return Claim(lock, owner, None)
        found = read_owner(lock)
        if found is None:  # released in between: try again
            continue
        reason = stale_reason(*found)
        if reason is None:
            raise RunBusy(lock, found[0])
        if _take_over(lock, found[0], owner):
            return Claim(lock, owner, reason)
    found = read_owner(lock)
    raise RunBusy(lock, found[0] if found else None)


def _take_over(lock: Path, stale: dict | None, owner: dict) -> bool:
    """Replace a stale lock by ours; False when another process is doing it or did it first."""
    gate = lock.with_name(lock.name + ".takeover")
    if not _create(gate, owner):
        found = read_owner(gate)  # a taker that died mid-way leaves its gate: remove it for the next turn
        if found is not None and stale_reason(*found) is not None:
            gate.unlink(missing_ok=True)
        return False
    try:
        found = read_owner(lock)  # still the same stale lock? (another taker may have replaced it already)
        if found is not None and (found[0] or {}).get("token") != (stale or {}).get("token"):
            return False
        if found is not None and stale_reason(*found) is None:
            return False
        lock.unlink(missing_ok=True)
        return _create(lock, owner)
    finally:
        gate.unlink(missing_ok=True)
