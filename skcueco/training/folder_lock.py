"""The lock file by which one training run at a time writes in a checkpoint folder.

:class:`~skcueco.callbacks.Checkpoint` takes it when training starts and
removes it when training ends (docs/reliability.rst). Whether its holder
still runs is judged from the process id, host name, boot id and process
start time it records.
"""

import json
import os
import socket
import threading
import time
import uuid
import warnings
from pathlib import Path

LOCK_NAME = ".skcueco-checkpoint.lock"

# the locks this process holds: token -> the thread whose fit took it
_HELD = {}
_HELD_GUARD = threading.Lock()


def _read_bytes(path):
    try:
        with open(path, "rb") as file:
            return file.read(65536)
    except FileNotFoundError:
        return None


def _boot_id():
    return (_read_bytes("/proc/sys/kernel/random/boot_id") or b"").decode().strip() or None


def _process_start(pid):
    """When process ``pid`` started (clock ticks since boot, Linux), or None."""
    stat = _read_bytes(f"/proc/{int(pid)}/stat")
    if not stat:
        return None
    try:
        return int(stat.rsplit(b")", 1)[1].split()[19])
    except (IndexError, ValueError):
        return None


def _pid_alive(pid):
    if os.name == "nt":
        return True  # os.kill would end it: assumed alive
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: another user's process
        return True
    return True


class FolderLock:
    """The lock file by which one run at a time writes in a checkpoint folder.

    :meth:`acquire` creates ``.skcueco-checkpoint.lock`` in the folder with
    ``O_CREAT | O_EXCL`` (atomic: of two processes, one creates it), holding
    the run id, process id, host name and start time as JSON. A lock whose
    holder is gone is taken over with a warning: a process of this host
    that no longer runs (or a process id since reused by another process),
    a machine restarted since, or, in this process, a fit of the same
    thread that ended without releasing it. A lock of a live process, or of
    another host (whose processes cannot be seen from here), refuses the
    run.

    Parameters
    ----------
    folder : pathlib.Path
        The checkpoint folder; it must exist.
    run_id : str
        Id of the run that writes in it.
    """

    def __init__(self, folder, run_id):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.run_id = str(run_id)
        self._raw = None

    def acquire(self):
        """Take the lock, or raise a ValueError naming the folder and its holder."""
        token = uuid.uuid4().hex
        record = {
            "run_id": self.run_id, "pid": os.getpid(), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "token": token,
            "boot_id": _boot_id(), "process_start": _process_start(os.getpid()),
        }
        raw = (json.dumps(record, indent=1) + "\n").encode()
        deadline = time.monotonic() + 5.0
        while True:
            if time.monotonic() > deadline:
                raise ValueError(
                    f"The checkpoint folder {self.folder} is contested: its lock file "
                    f"{self.path} keeps changing, other processes are taking it."
                )
            if self._create(raw):
                with _HELD_GUARD:
                    _HELD[token] = threading.current_thread()
                self._raw, self.token = raw, token
                return
            found = _read_bytes(self.path)
            if found is None:
                continue  # released in between: try again
            holder = _parse_lock(found)
            if holder is None and self._age() < 2.0 and time.monotonic() < deadline:
                time.sleep(0.02)  # being written by the process that created it
                continue
            why = _why_stale(holder)
            if why is None:
                raise ValueError(self._in_use(holder))
            if self._remove_if_unchanged(found):
                warnings.warn(
                    f"The checkpoint folder {self.folder} was locked by "
                    f"{_describe_holder(holder)}, {why}; this run took the lock over.",
                    RuntimeWarning, stacklevel=2,
                )

    def check(self):
        """Raise a ValueError unless the lock file is still this run's."""
        found = _read_bytes(self.path)
        if found == self._raw:
            return
        if found is None and self._create(self._raw):
            warnings.warn(
                f"The lock file {self.path} of this run's checkpoint folder was "
                "removed while the run was writing in it; it was put back.",
                RuntimeWarning, stacklevel=2,
            )
            return
        holder = _parse_lock(found) if found else None
        raise ValueError(
            f"The checkpoint folder {self.folder} is no longer this run's: its lock "
            f"file {self.path} now names {_describe_holder(holder)}; nothing was "
            "written, so as not to overwrite that run's checkpoints."
        )

    def release(self):
        """Remove the lock file if it is still this run's (repeating is harmless)."""
        if self._raw is None:
            return
        with _HELD_GUARD:
            _HELD.pop(self.token, None)
        if _read_bytes(self.path) == self._raw:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
        self._raw = None

    def _create(self, raw):
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
        try:
            fd = os.open(self.path, flags, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as file:
            file.write(raw)
            file.flush()
            os.fsync(file.fileno())
        return True

    def _age(self):
        try:
            return time.time() - os.stat(self.path).st_mtime
        except FileNotFoundError:
            return 0.0

    def _remove_if_unchanged(self, raw):
        """Remove the lock file if it still holds ``raw``; True if removed.

        Two processes may judge the same lock stale at once: the file is
        first renamed aside (atomic, one of them succeeds) and removed only
        if it is the one judged; a lock taken in between is put back.
        """
        aside = self.folder / f"{LOCK_NAME}.{uuid.uuid4().hex[:12]}.old"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return False
        if _read_bytes(aside) == raw:
            os.unlink(aside)
            return True
        try:
            os.link(aside, self.path)  # fails rather than replace a newer lock
        except FileExistsError:
            pass
        except OSError:  # no hard links here
            if not self.path.exists():
                os.rename(aside, self.path)
        aside.unlink(missing_ok=True)
        return False

    def _in_use(self, holder):
        return (
            f"The checkpoint folder {self.folder} is in use by "
            f"{_describe_holder(holder)}: two runs writing in one folder would "
            "overwrite each other's checkpoints. Use another folder, or wait until "
            f"that run ends. If it no longer runs, delete {self.path}."
        )


def _parse_lock(raw):
    """The holder a lock file names, or None for a damaged one."""
    try:
        holder = json.loads(raw)
        valid = (isinstance(holder["pid"], int) and 0 < holder["pid"] < 2 ** 31
                 and isinstance(holder["host"], str) and isinstance(holder["run_id"], str))
    except (ValueError, KeyError, TypeError):
        return None
    return holder if valid else None


def _describe_holder(holder):
    if holder is None:
        return "a damaged lock file"
    return (f"training run {holder['run_id']} (process {holder['pid']} on "
            f"{holder['host']}, started {holder.get('started', 'at an unknown time')})")


def _why_stale(holder):
    """Why the lock of ``holder`` is stale, or None if its holder may still run."""
    if holder is None:
        return "which is damaged"
    if holder["host"] != socket.gethostname():
        return None  # another machine's processes cannot be seen from here
    boot = _boot_id()
    if holder.get("boot_id") and boot and holder["boot_id"] != boot:
        return "which was taken before this machine restarted"
    pid = int(holder["pid"])
    if pid == os.getpid():
        with _HELD_GUARD:
            thread = _HELD.get(str(holder.get("token")))
        if thread is None:
            return f"whose process id {pid} is now this process's"
        if thread is threading.current_thread() or not thread.is_alive():
            with _HELD_GUARD:
                _HELD.pop(str(holder.get("token")), None)
            return "left by a fit of this process that ended without releasing it"
        return None
    if not _pid_alive(pid):
        return f"whose process {pid} no longer runs"
    started = holder.get("process_start")
    if started is not None and _process_start(pid) not in (None, started):
        return f"whose process {pid} no longer runs (the id is now another process's)"
    return None
