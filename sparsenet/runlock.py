"""One study per run folder: an flock on ``<folder>/.lock``, held for the run, naming its holder."""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path


class FolderBusy(RuntimeError):
    """Another study is running in the same run folder."""


@contextmanager
def run_lock(folder: Path):
    """Hold an flock on ``<folder>/.lock`` for the run, the holder's pid and start time written in it:
    two studies in one folder would write the same files and time on the same cores at once."""
    try:
        import fcntl
    except ImportError:                    # no flock (Windows): run unlocked, as before
        yield
        return
    f = _take_lock(Path(folder) / ".lock", fcntl)
    try:
        yield
    finally:
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        f.close()


def _take_lock(path: Path, fcntl):
    """The open, flocked lock file; FolderBusy naming the holder when a live process holds it."""
    for _ in range(5):
        f = open(path, "a+")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(f)
            f.close()
            if holder.get("pid") is None or _alive(holder["pid"]):
                raise FolderBusy(f"{path.parent} is in use by another study (pid {holder.get('pid', '?')}, "
                                 f"started {holder.get('started', '?')}); wait for it to end, or give this "
                                 f"run another --run-id or --results-dir") from None
            # held, but its study is gone (a child process kept the file open): a fresh file takes over
            path.unlink(missing_ok=True)
            continue
        try:
            same = os.fstat(f.fileno()).st_ino == path.stat().st_ino
        except FileNotFoundError:
            same = False
        if not same:                       # replaced by a take-over between open and flock: retry
            f.close()
            continue
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"pid": os.getpid(),
                            "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}) + "\n")
        f.flush()
        return f
    raise FolderBusy(f"{path.parent}: could not take the lock {path}; try again")


def _lock_holder(f) -> dict:
    """What the lock file says of its holder ({} when unreadable: it may be writing it just now)."""
    try:
        f.seek(0)
        holder = json.loads(f.read() or "{}")
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) and isinstance(holder.get("pid"), int) else {}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:                # alive, another user's
        return True
    return True
