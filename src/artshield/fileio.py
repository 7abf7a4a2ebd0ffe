"""Writing files and folders so that nothing is ever half-written or lost.

Every output artshield produces (images, reports, checkpoints, model folders) goes through this module:

- :func:`atomic_write` / :func:`write_bytes_atomic` / :func:`write_text_atomic` / :func:`write_json_atomic`
  write to a temporary file beside the destination, flush and fsync it, give it the permissions a normal
  new file would have (``mkstemp`` makes 0600 files), rename it over the destination, and fsync the folder.
  An interruption leaves either the old file or the new one, and no temporary file.
- :func:`staging_folder` + :func:`publish_folder` do the same for a folder: build it under a hidden
  temporary name beside the destination, then swap it in by renames.
- :func:`sha256_file` identifies a file by its bytes.

A failure to write is an :class:`~artshield.errors.OutputWriteError` naming the path.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from .errors import OutputWriteError

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike


def default_file_mode() -> int:
    """0o666 minus the process umask, read without changing it (os.umask would race other threads)."""
    return 0o666 & ~_umask()


def default_folder_mode() -> int:
    """0o777 minus the process umask."""
    return 0o777 & ~_umask()


def _umask() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def fsync_folder(folder: PathLike) -> None:
    """Persist a rename inside `folder` (POSIX); best effort, skipped where folders cannot be opened."""
    try:
        dfd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def atomic_write(dest: PathLike, writer: Callable[[IO[bytes]], None], *, what: str = "file") -> Path:
    """Write through ``writer(handle)`` to a temporary file beside `dest`, fsync, then rename over `dest`.

    The parent folder is created if needed. On any failure (KeyboardInterrupt included) the temporary file
    is removed and `dest` is untouched. Returns `dest` as a Path.
    """
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    except OSError as exc:
        raise OutputWriteError(f"{what} {str(dest)!r}: cannot create a file in {str(dest.parent)!r} "
                               f"({exc.strerror or exc}).") from exc
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            writer(fh)
            fh.flush()
            os.fsync(fh.fileno())
        # The permissions a normal new file would have, or those of the file it replaces.
        try:
            mode = dest.stat().st_mode & 0o7777 if dest.is_file() else default_file_mode()
            os.chmod(tmp, mode)
        except OSError:
            pass
        os.replace(tmp, dest)
    except BaseException as exc:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        except OSError:
            logger.warning("could not remove the temporary file %s", tmp)
        if isinstance(exc, OSError):
            raise OutputWriteError(f"{what} {str(dest)!r} could not be written ({exc.strerror or exc}).") from exc
        raise
    fsync_folder(dest.parent)
    return dest


def write_bytes_atomic(dest: PathLike, data: bytes, *, what: str = "file") -> Path:
    """Write `data` to `dest` atomically (see :func:`atomic_write`)."""
    return atomic_write(dest, lambda fh: fh.write(data), what=what)


def write_text_atomic(dest: PathLike, text: str, *, what: str = "file") -> Path:
    """Write UTF-8 text to `dest` atomically."""
    return write_bytes_atomic(dest, text.encode("utf-8"), what=what)


def write_json_atomic(dest: PathLike, data: Any, *, what: str = "report") -> Path:
    """Write `data` as indented JSON (strict: NaN and infinity are refused, not written) atomically."""
    try:
        text = json.dumps(data, indent=2, allow_nan=False) + "\n"
    except (TypeError, ValueError) as exc:
        raise OutputWriteError(f"{what} {str(dest)!r} could not be written: {exc}") from exc
    return write_text_atomic(dest, text, what=what)


def sha256_file(path: PathLike) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def same_path(a: PathLike, b: PathLike) -> bool:
    """Whether two paths name the same file or folder (equal once resolved, or the same inode)."""
    a, b = Path(a).expanduser(), Path(b).expanduser()
    try:
        if a.resolve() == b.resolve():
            return True
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_output_file(label: str, path: PathLike) -> Path:
    """Refuse, before any work, an output file path that cannot be written: an existing folder, or a
    parent that is a file. Returns the expanded path."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise OutputWriteError(f"{label} {str(path)!r} is a folder; give a file name.")
    _check_parents(label, path)
    return path


def check_output_folder(label: str, path: PathLike) -> Path:
    """Refuse, before any work, an output folder path that cannot be a folder: an existing file, or a parent
    that is a file. Returns the expanded path."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise OutputWriteError(f"{label} {str(path)!r} is a file, not a folder; give a folder.")
    _check_parents(label, path)
    return path


def _check_parents(label: str, path: Path) -> None:
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputWriteError(f"{label} {str(path)!r}: {str(parent)!r} is a file, not a folder.")
            break


def refuse_overlaps(inputs: Iterable[tuple[str, PathLike]], outputs: Iterable[tuple[str, PathLike]]) -> None:
    """Refuse, before any work, a run whose outputs would destroy something: an output that is one of the
    inputs (an image, a mask, a data folder) or another output of the same run. Each item is
    ``(label, path)``; labels name the culprits in the one-line error."""
    inputs, outputs = list(inputs), list(outputs)
    for index, (out_label, out_path) in enumerate(outputs):
        for in_label, in_path in inputs:
            if same_path(out_path, in_path):
                raise OutputWriteError(
                    f"{out_label} {str(out_path)!r} is the {in_label} {str(in_path)!r}; it would be overwritten. "
                    "Choose another path."
                )
        for other_label, other_path in outputs[index + 1:]:
            if same_path(out_path, other_path):
                raise OutputWriteError(
                    f"{out_label} {str(out_path)!r} and {other_label} {str(other_path)!r} are the same path; "
                    "one would overwrite the other."
                )


STAGING_PREFIX = ".artshield-staging-"


@contextlib.contextmanager
def staging_folder(beside: PathLike) -> Iterator[Path]:
    """A hidden temporary folder next to `beside` (same file system, so renames are atomic), removed on exit
    unless it was moved away (by :func:`publish_folder`)."""
    beside = Path(beside)
    try:
        beside.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{beside.name}.", dir=beside.parent))
    except OSError as exc:
        raise OutputWriteError(f"folder {str(beside)!r}: cannot create a folder in {str(beside.parent)!r} "
                               f"({exc.strerror or exc}).") from exc
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publish_file(staged: PathLike, dest: PathLike) -> Path:
    """Move a finished file `staged` (written elsewhere in the same file system, e.g. by a library's own
    ``save`` into a staging folder) to `dest` in one rename, with normal permissions."""
    staged, dest = Path(staged), Path(dest)
    with contextlib.suppress(OSError):
        os.chmod(staged, default_file_mode())
    try:
        os.replace(staged, dest)
    except OSError as exc:
        raise OutputWriteError(f"file {str(dest)!r} could not be written ({exc.strerror or exc}).") from exc
    fsync_folder(dest.parent)
    return dest


def publish_folder(staged: PathLike, dest: PathLike) -> Path:
    """Move a finished folder `staged` to `dest`, replacing an existing `dest` by renames only.

    The old `dest` (if any) is renamed aside first and deleted only after the new one is in place, so an
    interruption leaves either the old folder or the new one (plus, at worst, a hidden ``*.old`` folder).
    Permissions of everything inside are reset to the normal ones (``mkdtemp`` makes 0700 folders).
    """
    staged, dest = Path(staged), Path(dest)
    _normal_permissions(staged)
    previous = None
    try:
        if dest.exists():
            if not dest.is_dir():
                raise OutputWriteError(f"folder {str(dest)!r} exists and is not a folder.")
            previous = dest.with_name(f"{STAGING_PREFIX}{dest.name}.old")
            if previous.exists():
                shutil.rmtree(previous)
            os.replace(dest, previous)
        os.replace(staged, dest)
    except OSError as exc:
        if previous is not None and previous.exists() and not dest.exists():
            os.replace(previous, dest)  # put the old folder back
        raise OutputWriteError(f"folder {str(dest)!r} could not be written ({exc.strerror or exc}).") from exc
    fsync_folder(dest.parent)
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)
    return dest


def _normal_permissions(folder: Path) -> None:
    file_mode, folder_mode = default_file_mode(), default_folder_mode()
    for root, dirs, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):
                os.chmod(Path(root) / name, file_mode)
        for name in dirs:
            with contextlib.suppress(OSError):
                os.chmod(Path(root) / name, folder_mode)
    with contextlib.suppress(OSError):
        os.chmod(folder, folder_mode)


def remove_stale_staging(folder: PathLike) -> list[Path]:
    """Delete staging folders a killed run left in `folder` (never finished outputs: those were renamed)."""
    removed = []
    folder = Path(folder)
    if folder.is_dir():
        for entry in folder.iterdir():
            if entry.name.startswith(STAGING_PREFIX) and entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
    return removed


__all__ = [
    "atomic_write",
    "check_output_file",
    "check_output_folder",
    "default_file_mode",
    "default_folder_mode",
    "fsync_folder",
    "publish_file",
    "publish_folder",
    "refuse_overlaps",
    "remove_stale_staging",
    "same_path",
    "sha256_file",
    "staging_folder",
    "write_bytes_atomic",
    "write_json_atomic",
    "write_text_atomic",
]
