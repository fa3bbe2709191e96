"""Checkpoint files that are whole or absent: written beside the target, synced, then renamed.

Lightning 2.6's writer (`TorchCheckpointIO` through fsspec's transaction) stages the file in the
system temporary folder and moves it into place without an fsync: a move across file systems is
a copy, which a kill can leave half-written under the final name; and a permission error on that
move is swallowed (no error, no file) or, across file systems, reported as a hint to upgrade
fsspec (`lightning.fabric.utilities.cloud_io._atomic_save`). `AtomicCheckpointIO` writes
`<dir>/.<name>.partial` in the checkpoint's own folder, fsyncs it, renames it over `<name>`
(atomic on POSIX) and fsyncs the folder; on any OS error it removes the partial file and raises
`CheckpointWriteError` naming the file, its folder and the error, leaving the previous file as
it was. `replace_with_symlink` swaps a link the same way (Lightning removes `last.ckpt`, then
creates the new link). `on_stage` lets a fault-injection test stop the writer half-way.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

PARTIAL_SUFFIX = ".partial"

on_stage: Callable[[str, Path], None] | None = None
"""For fault-injection tests only; production code never sets it. Called as `on_stage(stage, path)`
while the checkpoint `path` is half-way written, so that a test can kill the process exactly there:
stage "written" (the staging file beside `path` holds the bytes, not yet flushed, fsynced or renamed
onto `path`) or "linking" (the new link is staged beside `path`, not yet renamed over it)."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written; `errno` is the OS error's (e.g. ENOSPC, EACCES)."""


def is_local(path: str | Path) -> bool:
    return "://" not in str(path) or str(path).startswith("file://")


def partial_path(path: str | Path) -> Path:
    """Where `path` is staged: a hidden file beside it (same file system, so the rename is atomic)."""
    path = Path(str(path).removeprefix("file://"))
    return path.with_name(f".{path.name}{PARTIAL_SUFFIX}")


def _fsync_directory(directory: Path) -> None:
    """Make a rename in `directory` durable (no-op where folders cannot be opened, e.g. Windows)."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _write_error(path: Path, error: OSError) -> CheckpointWriteError:
    code = f"{errno.errorcode[error.errno]}, " if error.errno in errno.errorcode else ""
    return CheckpointWriteError(error.errno, f"cannot write the checkpoint {path} (directory {path.parent}): "
                                             f"{code}{error.strerror or error}; any previous file there is unchanged")


@contextlib.contextmanager
def _staged(path: Path) -> Iterator[Path]:
    """The staging path beside `path`, for the block to fill and rename onto `path`. An OS error
    removes it and raises `CheckpointWriteError`; success fsyncs the folder (the rename is durable)."""
    staging = partial_path(path)
    try:
        yield staging
    except (OSError, RuntimeError) as error:
        cause = _os_error_in(error)
        if cause is None:
            raise
        with contextlib.suppress(OSError):
            staging.unlink()
        raise _write_error(path, cause) from error
    _fsync_directory(path.parent)


def _os_error_in(error: BaseException) -> OSError | None:
    """The OS error behind `error`: itself, or the one torch's zip writer wraps in a RuntimeError
    ("[enforce fail at inline_container.cc] unexpected pos ...", the OSError in its context)."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _reached(stage: str, path: Path) -> None:
    if on_stage is not None:
        on_stage(stage, path)


def atomic_write(path: str | Path, write: Callable[[BinaryIO], Any]) -> None:
    """Call `write(file)` on a staging file beside `path`, fsync it and rename it to `path`."""
    path = Path(str(path).removeprefix("file://"))
    with _staged(path) as staging:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(staging, "wb") as file:
            write(file)
            _reached("written", path)
            file.flush()
            os.fsync(file.fileno())
        os.replace(staging, path)


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """`torch.save(obj, path)`, atomically (see `atomic_write`)."""
    atomic_write(path, lambda file: torch.save(obj, file))


def replace_with_symlink(target: str, link: str | Path) -> None:
    """Point `link` at `target` (relative to the link's folder) in one rename; where symlinks are
    not allowed (Windows without the privilege), an atomic copy of the target instead."""
    link = Path(link)
    staging = partial_path(link)
    try:
        if staging.is_symlink() or staging.exists():
            staging.unlink()
        os.symlink(target, staging)
    except OSError:
        atomic_write(link, lambda file: file.write((link.parent / target).read_bytes()))
        return
    with _staged(link):
        if link.is_dir() and not link.is_symlink():
            shutil.rmtree(link)
        _reached("linking", link)
        os.replace(staging, link)


class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` whose local files are written atomically and durably; a failure raises
    `CheckpointWriteError` and leaves no partial file. Remote paths (s3:// ...) go to Lightning's
    writer as before."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("`Trainer.save_checkpoint(..., storage_options=...)` with `storage_options` arg"
                            f" is not supported for `{type(self).__name__}`.")
        if not is_local(path):
            super().save_checkpoint(checkpoint, path)
            return
        atomic_torch_save(checkpoint, path)
