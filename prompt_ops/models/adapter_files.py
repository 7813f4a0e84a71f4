"""The adapter folder format and safe writing: what :meth:`TunedModel.save_adapter` writes and
:func:`prompt_ops.models.load_adapter` reads, and how files are replaced without ever losing what was there."""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from prompt_ops.methods.official import folder_path

WEIGHTS_FILE = "adapter.safetensors"
CONFIG_FILE = "adapter_config.json"
FORMAT = "prompt_ops-adapter"
FORMAT_VERSION = 1
UNUSABLE_FOLDER = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR, errno.EEXIST)
"""The ``errno`` of a write that fails because of the ``directory`` argument (no permission, a read-only file
system, a file where a folder goes): a ``ValueError`` naming the folder. Other ``OSError`` (a full disk) propagate."""


def output_folder(directory: object) -> Path:
    """``directory`` as a folder to write into, created if needed: a ``TypeError`` naming ``directory`` if it is not
    a path, a ``ValueError`` if it names a file."""
    folder = folder_path("directory", directory)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"directory must be a folder, but {folder} is a file")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        if err.errno not in UNUSABLE_FOLDER:
            raise
        raise ValueError(f"directory {folder} cannot be created ({err})") from None
    return folder


def write_files(folder: Path, writers: dict[str, Callable[[Path], None]]) -> None:
    """Each ``name -> write(path)`` writes into a temporary file in ``folder``; only when all have been written are
    they renamed over ``folder / name`` (an atomic replace each). A failure while writing leaves the folder as it
    was."""
    temporary: dict[str, Path] = {}
    try:
        for name, write in writers.items():
            handle, path = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
            os.close(handle)
            temporary[name] = Path(path)
            write(temporary[name])
        for name, path in temporary.items():
            os.replace(path, folder / name)
    except OSError as err:
        if err.errno not in UNUSABLE_FOLDER:  # a full disk, an I/O error: the machine's problem, not the argument's
            raise
        raise ValueError(f"directory {folder} cannot be written ({err}); what it held is unchanged") from None
    finally:
        for path in temporary.values():
            path.unlink(missing_ok=True)
