"""One writer per results file: a run holds an exclusive lock on its output for its whole life.

The lock is `fcntl.flock` on a file next to the output, `FILE.lock`, which holds "pid host" of
the run holding it, for the message that refuses a second run. The lock is taken before anything
reads or changes `FILE`, without waiting: a second run on the same output is refused at once.
flock belongs to the open file, so the kernel drops it when its process dies, even by kill -9:
a lock file left behind never blocks anyone.

The holder removes the lock file when it ends, still holding the lock. A run that opened the file
just before finds, once it gets the lock, that the path no longer names the file it locked, and
starts again on a new one; the same check covers every other unlink/recreate race.

Every path that names the output names one lock: the lock is taken on the output's real path
(`real_output`: symbolic links to the file, the folder or a folder above, and `..`, resolved), so
a second run that reaches the same output through a link is refused like any other.

flock protects runs on one machine, and on a network filesystem only as far as that filesystem
carries flock between machines (see docs/results-file.md).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

from fastgen.jobs.results_file import ResultsFileError, check_not_foreign, check_writable, unwritable_message


class OutputInUse(ResultsFileError):
    """Another run holds the results file's lock."""


def real_output(out: Path) -> Path:
    """The output's real path: the one file or folder that every path naming it opens, symbolic
    links and ``..`` resolved as the system resolves them (``os.path.abspath`` folds ``a/..``
    before following ``a``, which may name another file)."""
    return Path(os.path.realpath(out))


def lock_path(out: Path) -> Path:
    return out.with_name(out.name + ".lock")


class OutputLock:
    """The exclusive lock on the results file `out` (by its real path, `real_output`); `acquire`
    raises `OutputInUse` when taken."""

    def __init__(self, out: Path):
        self.out = real_output(out)
        self.path = lock_path(self.out)
        self._fd: int | None = None

    def acquire(self) -> None:
        while True:
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                os.close(fd)
                raise OutputInUse(
                    f"{self.out} is being written by another fastgen run ({holder}; lock file {self.path}); "
                    "wait for it to end or stop it, or choose another --out path"
                ) from None
            except BaseException:
                os.close(fd)
                raise
            if self._path_names(fd):
                break
            os.close(fd)  # removed or replaced since we opened it: the lock that counts is on the new file
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        """Remove the lock file (only if it is still ours) and drop the lock."""
        if self._fd is None:
            return
        if self._path_names(self._fd):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        os.close(self._fd)
        self._fd = None

    def _open(self) -> int:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as error:
            raise ResultsFileError(unwritable_message(self.path, error)) from None

    def _path_names(self, fd: int) -> bool:
        """Whether the lock path still names the file open as `fd`."""
        try:
            on_disk = os.stat(self.path)
        except FileNotFoundError:
            return False
        opened = os.fstat(fd)
        return (on_disk.st_dev, on_disk.st_ino) == (opened.st_dev, opened.st_ino)


def _holder(fd: int) -> str:
    """'pid P on host H' as the holder wrote it into the lock file."""
    words = os.pread(fd, 256, 0).decode("utf-8", errors="replace").split()
    if len(words) < 2:
        return "its pid is not written yet"
    return f"pid {words[0]} on host {words[1]}"


def lock_then_check(out: Path, check: Callable[[Path], None]) -> OutputLock:
    """Lock `out`, then run `check` on its real path (what it holds is only read under the lock);
    the lock is released when the check refuses `out`. The caller releases the returned lock."""
    lock = OutputLock(out)
    lock.acquire()
    try:
        check(lock.out)
    except BaseException:
        lock.release()
        raise
    return lock


def claim_output(out: Path) -> OutputLock:
    """Check that `out` can be written, lock it, then refuse it if it is not fastgen's: all
    before a model is loaded. The caller releases the returned lock when the run ends."""
    check_writable(out)
    return lock_then_check(out, check_not_foreign)


@contextlib.contextmanager
def hold_output(out: Path | None) -> Iterator[None]:
    """Hold `out`'s lock within the block (nothing to hold when the output is stdout)."""
    if out is None:
        yield
        return
    lock = claim_output(out)
    try:
        yield
    finally:
        lock.release()
