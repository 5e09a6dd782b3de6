"""Writing files safely: atomically, and never over the files being read.

Plain Python: the tools, the checkpointer and the converters all use it, with or without
detectron2.
"""

import os
from typing import IO, Callable, Iterable, Tuple

__all__ = ["atomic_write", "check_outputs_spare_inputs"]


def atomic_write(path: str, write: Callable[[IO], None], mode: str = "wb") -> None:
    """Writes a file so that a reader (or a crash) never sees half of it: ``write(f)`` fills a
    temporary file in the same folder, which is flushed to disk and then renamed over ``path``.
    A kill mid-write leaves ``path`` as it was (and a ``.tmp-<pid>`` file beside it)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    try:  # the rename itself survives a power loss once the folder is synced
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _same(a: str, b: str) -> bool:
    """Whether two paths name one file or folder: relative paths and symbolic links resolved;
    for existing paths also hard links (and case-insensitive file systems)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet): then only the resolved names count
        return False


def _inside(path: str, folder: str) -> bool:
    real, root = os.path.realpath(path), os.path.realpath(folder)
    return real != root and os.path.commonpath([real, root]) == root


def check_outputs_spare_inputs(
    inputs: Iterable[Tuple[str, str]],
    outputs: Iterable[str] = (),
    output_folders: Iterable[str] = (),
    *,
    option: str,
) -> None:
    """Refuses outputs that would replace what a tool reads, before the tool does any work.

    Paths are compared as what they name on disk, so ``out/../in.pth``, a symbolic link to an
    input, or a link to its folder are the input too.

    Args:
        inputs: ``(setting, path)`` of every file or folder the tool reads, e.g.
            ``("--input", "resnet50.pth")``; ``setting`` names it in the message. Empty paths and
            URLs (``"://"``) are skipped.
        outputs: the files the tool writes and the folders it writes them into: none may be an
            input.
        output_folders: folders the tool fills with files it does not name in advance (a
            training run's checkpoints, logs and config): none may be an input or hold one, at
            any depth.
        option: the setting that chose the outputs, e.g. ``"--output"``: the fix the message
            asks for.

    Raises:
        ValueError: naming the output, the input it would replace, and the fix.
    """
    inputs = [(name, path) for name, path in inputs if path and "://" not in path]
    for output in outputs:
        for name, path in inputs:
            if _same(output, path):
                kind = "folder" if os.path.isdir(path) else "file"
                raise ValueError(
                    f"{option} would write over {name} {path!r}: {output!r} is the same {kind} "
                    f"({os.path.realpath(path)}). Choose another {option}, so that the input is "
                    "kept."
                )
    for folder in output_folders:
        for name, path in inputs:
            if _same(folder, path) or _inside(path, folder):
                where = "is" if _same(folder, path) else "holds"
                raise ValueError(
                    f"{option} would write into {folder!r}, which {where} {name} {path!r} "
                    f"({os.path.realpath(path)}), and may write over it. Choose another "
                    f"{option}, or move the input out of that folder."
                )
