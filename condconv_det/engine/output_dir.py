"""The output folder of a training: one training at a time, and no finished run overwritten.

:func:`claim_output_dir` locks the folder for the process (an advisory ``flock`` on
``OUTPUT_DIR/.train.lock``, which the system releases when the process ends, killed or not) and
refuses a folder that holds another run's checkpoints unless the run resumes them or the user
asks for the overwrite.
"""

import fcntl
import os
from typing import IO, Optional

__all__ = [
    "OutputDirInUseError",
    "OutputDirNotEmptyError",
    "claim_output_dir",
    "release_output_dir",
]

LOCK_NAME = ".train.lock"


class OutputDirInUseError(RuntimeError):
    """Another process trains into the same output folder."""


class OutputDirNotEmptyError(FileExistsError):
    """The output folder holds the checkpoints of an earlier run."""


# The open lock files of this process: the lock lasts as long as the file stays open.
_held = {}


def claim_output_dir(
    path: str, *, resume: bool, overwrite: bool = False, key: str = "OUTPUT_DIR"
) -> Optional[IO]:
    """Locks ``path`` for this process's training and checks that it may write there.

    Args:
        path: the output folder (created if missing); remote folders (``scheme://``) are not
            locked or checked.
        resume: the run continues the checkpoints in ``path`` (``--resume``).
        overwrite: the user asked to start a new run over an earlier one (``--overwrite``).
        key: how the setting is called, for the messages.

    Returns:
        the open lock file (held until the process ends), or None for a remote folder.

    Raises:
        OutputDirInUseError: another process holds the lock.
        OutputDirNotEmptyError: ``path`` holds an earlier run's checkpoints (``last_checkpoint``)
            and neither ``resume`` nor ``overwrite`` is set.
    """
    if "://" in path:
        return None
    path = os.path.abspath(os.path.expanduser(path))
    lock = _held.get(path)  # this process trains there already (e.g. two runs in one process)
    if lock is None:
        os.makedirs(path, exist_ok=True)
        lock = open(os.path.join(path, LOCK_NAME), "a+")
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.seek(0)
            owner = lock.read().strip() or "unknown"
            lock.close()
            raise OutputDirInUseError(
                f"{key} {path!r} is in use by another training (process {owner}): wait for it "
                f"to end, or give this run another {key}."
            ) from None
    last = os.path.join(path, "last_checkpoint")
    if os.path.exists(last) and not (resume or overwrite):
        with open(last) as f:
            named = f.read().strip()
        if path not in _held:
            lock.close()
        raise OutputDirNotEmptyError(
            f"{key} {path!r} holds the checkpoints of an earlier run (last_checkpoint names "
            f"{named!r}): add --resume to continue it, give another {key}, or add --overwrite "
            "to start a new run there (its checkpoints are replaced as the new run saves)."
        )
    if path not in _held:
        lock.seek(0)
        lock.truncate()
        lock.write(str(os.getpid()))
        lock.flush()
        _held[path] = lock
    return lock


def release_output_dir(path: str) -> None:
    """Releases the lock :func:`claim_output_dir` took on ``path`` (the end of the process does
    it too)."""
    lock = _held.pop(os.path.abspath(os.path.expanduser(path)), None)
    if lock is not None:
        lock.close()
