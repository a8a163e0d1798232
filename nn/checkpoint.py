"""Saving and loading a model's parameters: ``.npz`` archives, never pickle, written atomically.

``save`` writes the archive to a temporary file beside the target, flushes it to disk and
renames it over the target, so a crash mid-save leaves the previous file whole. ``load``
reads and checks everything (archive integrity, no pickled objects, names, shapes,
dtypes) before it changes any parameter, so a bad file leaves the model as it was.

>>> import os, tempfile
>>> import nn
>>> path = os.path.join(tempfile.mkdtemp(), "model.npz")
>>> save(nn.TwoLayerNet(4, 8, 3, seed=0), path)
>>> model = load(nn.TwoLayerNet(4, 8, 3, seed=1), path)
>>> bool((model.fc1.weight.data == nn.TwoLayerNet(4, 8, 3, seed=0).fc1.weight.data).all())
True
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import zipfile
import zlib
from pathlib import Path

import numpy as np

from nn.module import Module, StateDictError

PathLike = str | os.PathLike
ZIP_MAGIC = b"PK\x03\x04"


class CheckpointError(ValueError):
    """A checkpoint file cannot be loaded into the model; the message names the file and why."""


def save(model: Module, path: PathLike) -> None:
    """Write ``model.state_dict()`` to ``path`` as an ``.npz`` archive, atomically.

    Through a symbolic link, the file it names is replaced, as ``np.savez`` writes. A
    directory, a missing directory or a read-only file at ``path`` is refused before anything
    is written.

    >>> import tempfile, nn
    >>> save(nn.Linear(2, 2), Path(tempfile.mkdtemp()) / "linear.npz")
    """
    target = writable_path(path, "nn.save")
    state = model.state_dict()
    descriptor, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(descriptor, "wb") as f:
            _write_npz(f, state)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temporary, target.stat().st_mode & 0o777 if target.exists() else 0o666 & ~_umask())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    _sync_directory(target.parent)


def writable_path(path: PathLike, where: str) -> Path:
    """The file to write for ``path`` (a symbolic link's target), or an OSError starting with ``where``.

    Checked before any work, so that a long computation does not end in an unwritable path
    (the command line checks ``--save`` with it before training).

    >>> writable_path("/no/such/dir/m.npz", "nn.save")
    Traceback (most recent call last):
    ...
    FileNotFoundError: nn.save: cannot write /no/such/dir/m.npz: the directory /no/such/dir does not exist
    """
    path = Path(path)
    # Replacing a link by a regular file would leave the file it names stale, so write that file.
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    problem: OSError | None
    if target.is_dir():
        problem = IsADirectoryError("it is a directory")
    elif not target.parent.exists():
        problem = FileNotFoundError(f"the directory {target.parent} does not exist")
    elif not target.parent.is_dir():
        problem = NotADirectoryError(f"{target.parent} is a file, not a directory")
    elif target.exists() and not (os.access(target, os.W_OK) and target.stat().st_mode & 0o222):
        # Renaming over it would succeed, but a read-only file asks not to be replaced (the mode
        # bits say so even to root, whom os.access lets write anything).
        problem = PermissionError("the file is read-only")
    else:
        problem = _cannot_create_in(target)
    if problem is not None:
        raise type(problem)(f"{where}: cannot write {path}: {problem}")
    return target


def _cannot_create_in(target: Path) -> OSError | None:
    """Why no file can be made beside ``target`` (where the new file is written, then renamed),
    found by making one: permissions do not tell, for root or on a file system such as /proc."""
    try:
        descriptor, probe = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".probe", dir=target.parent)
    except OSError as err:
        return type(err)(f"no file can be made in {target.parent} ({err.strerror})")
    os.close(descriptor)
    os.unlink(probe)
    return None


def _write_npz(f: object, state: dict[str, np.ndarray]) -> None:
    # Written member by member rather than with np.savez(**state), so no parameter name
    # can collide with np.savez's own keyword arguments.
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as archive:
        for name, array in state.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, array, allow_pickle=False)


def _sync_directory(directory: Path) -> None:
    """Flush the directory entry, so the rename itself survives a power cut (POSIX only)."""
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


def load(model: Module, path: PathLike) -> Module:
    """Load parameters saved by :func:`save` into ``model`` (in place) and return it.

    Raises :class:`CheckpointError` (a ValueError) naming the file and the problem for a
    truncated or corrupted archive, one carrying pickled objects, or one whose names,
    shapes or dtypes do not fit the model; the model is then unchanged.

    >>> import tempfile, nn
    >>> path = Path(tempfile.mkdtemp()) / "small.npz"
    >>> save(nn.Linear(2, 3), path)
    >>> load(nn.Linear(2, 4), path)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    nn.checkpoint.CheckpointError: nn.load: .../small.npz does not fit Linear: 'weight' has shape (2, 3), ...
    """
    path = Path(path)
    state = read_checkpoint(path)
    try:
        model.load_state_dict(state)
    except StateDictError as err:
        problems = "; ".join(err.problems)
        raise CheckpointError(f"nn.load: {path} does not fit {type(model).__name__}: {problems}") from None
    return model


def read_checkpoint(path: PathLike, where: str = "nn.load") -> dict[str, np.ndarray]:
    """Every array in the ``.npz`` archive at ``path``, fully read and integrity-checked.

    Every way a file can be wrong (missing, truncated, corrupted, a pickle, object arrays)
    is one clear error starting with ``where``; the MNIST reader uses it too, so the messages
    say "archive", not "checkpoint".

    >>> import tempfile, nn
    >>> path = Path(tempfile.mkdtemp()) / "m.npz"
    >>> save(nn.Linear(2, 3), path)
    >>> sorted(read_checkpoint(path))
    ['bias', 'weight']
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(len(ZIP_MAGIC))
    except OSError as err:  # missing, a directory, not permitted: the same error, named
        raise type(err)(f"{where}: cannot read {path}: {err.strerror or err}") from None
    if head != ZIP_MAGIC:
        raise CheckpointError(f"{where}: {path} {_what_it_is_instead(head)}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            state = {name: archive[name] for name in archive.files}
    # zipfile says NotImplementedError for a damaged compression method or version, and
    # RuntimeError for a member flagged as encrypted: all are a damaged file to the user.
    except (ValueError, EOFError, OSError, NotImplementedError, RuntimeError, zipfile.BadZipFile,
            zlib.error) as err:
        raise _unreadable(path, err, where) from None
    for name, value in state.items():
        if not isinstance(value, np.ndarray):  # a member that is not .npy data
            raise CheckpointError(f"{where}: {path} member {name!r} is not a NumPy array")
    return state


def _umask() -> int:
    """The process's umask, which new files honour (os.umask can only be read by setting it)."""
    current = os.umask(0)
    os.umask(current)
    return current


def _what_it_is_instead(head: bytes) -> str:
    if ZIP_MAGIC.startswith(head):
        return f"is truncated: {len(head)} bytes, not a whole .npz archive"
    if head.startswith(b"\x93NUMPY"[:len(head)]):
        return "is a single .npy array, not an .npz archive"
    if head.startswith(b"\x80"):  # the opcode every pickle of protocol 2 or later starts with
        return "is a pickle, which is never loaded; only .npz archives of plain arrays are"
    return "is not an .npz archive (it does not start like a zip file)"


def _unreadable(path: Path, err: BaseException, where: str) -> CheckpointError:
    if "pickle" in str(err):
        return CheckpointError(f"{where}: {path} carries object arrays (pickled Python objects), which are "
                               f"never loaded (allow_pickle=False); only plain numeric arrays are")
    return CheckpointError(f"{where}: {path} is truncated or corrupted ({type(err).__name__}: {err})")
