"""Writing a file whole or not at all, safely beside other writers of the same file."""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def write_atomically(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(file)`` on a temporary file of this writer, then rename it to ``path``.

    The temporary file is in ``path``'s folder (so the rename is atomic) and has a
    name of its own, so two writers of the same ``path`` never collide; it is
    removed when anything fails.

    Raises:
        OSError: naming ``path`` and the cause (no space left, no permission).
    """
    path = Path(path)
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial",
                                             dir=path.parent)
    except OSError as error:
        raise _explained(error, path) from error
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise _explained(error, path) from error
        raise


def _explained(error: OSError, path: Path) -> OSError:
    cause = {errno.ENOSPC: "no space left on the device", errno.EACCES: "no permission",
             errno.EPERM: "no permission", errno.EROFS: "the file system is read-only"}.get(
        error.errno, error.strerror or type(error).__name__)
    return OSError(error.errno, f"cannot write {path}: {cause}")
