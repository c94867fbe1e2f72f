"""Atomic file writes and safe weight loading, shared by every stage that persists state.

Every file kdiqa writes goes through :func:`atomic_path`: it is written under a temporary name beside
its final path and renamed into place when complete, so a reader (or a resumed run) finds the old
file or the whole new one, never a torn write. A write that fails (a full disk, a read-only folder,
a path that cannot exist) becomes one :class:`~kdiqa.errors.OutputError` line naming the path and
what was being written, and leaves nothing behind; the temporary files of killed processes are
removed by the next write beside them.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from kdiqa.errors import CheckpointError, OutputError

STALE_SECONDS = 120.0  # a temporary file older than this (or whose writer is gone) is a leftover

# errno values that mean "this place cannot take the file", with what the user can do about it
_WRITE_HINTS = {
    errno.ENOSPC: "free some disk space and rerun",
    errno.EDQUOT: "free some space (disk quota exceeded) and rerun",
    errno.EFBIG: "the file is larger than this file system or the process limit allows",
    errno.EROFS: "the file system is read-only: choose another output folder",
    errno.EACCES: "no permission: choose another output folder",
    errno.EPERM: "not permitted: choose another output folder",
    errno.ENOENT: "no such folder, and none can be made there",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EEXIST: "a part of the path is a file, not a folder",
    errno.EISDIR: "the path is a folder",
    errno.ENAMETOOLONG: "the path is too long",
}


def os_reason(exc: OSError) -> str:
    """One line for an OSError: the system's words for its errno (h5py's own messages span lines)."""
    if exc.errno:
        return os.strerror(exc.errno)
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def write_error(path: str | os.PathLike, what: str, exc: OSError) -> OutputError:
    """The one-line error for a failed write of ``what`` to ``path``."""
    hint = _WRITE_HINTS.get(exc.errno or 0)
    return OutputError(f"{path}: cannot write {what} ({os_reason(exc)}){'; ' + hint if hint else ''}")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_HOST = f"{zlib.crc32(socket.gethostname().encode()) & 0xFFFF:04x}"


def _tmp_prefix(path: Path) -> str:
    """``.<name>.<host>-<pid>.``: lets a later run tell a dead writer's leftover from a live one's file."""
    return f".{path.name}.{_HOST}-{os.getpid()}."


def _writer_gone(tmp: Path, name: str) -> bool:
    """Whether the process that made ``tmp`` (per its name) is known to be dead on this host."""
    tag = tmp.name[len(name) + 2 :].split(".", 1)[0]
    host, _, pid = tag.partition("-")
    if host != _HOST or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete what killed writes left beside ``path`` (``.<name>.*.tmp``) and return them.

    A temporary file is a leftover when its writer (named in it) is no longer alive on this host, or
    when it is older than ``STALE_SECONDS``: a file still being written is fresh, as writing updates
    its modification time.
    """
    path = Path(path)
    removed: list[Path] = []
    now = time.time()
    try:
        candidates = list(path.parent.glob(f".{path.name}.*.tmp"))
    except OSError:
        return removed
    for tmp in candidates:
        try:
            if _writer_gone(tmp, path.name) or now - tmp.stat().st_mtime > STALE_SECONDS:
                if tmp.is_dir():

                    shutil.rmtree(tmp)
                else:
                    tmp.unlink()
                removed.append(tmp)
        except OSError:
            pass  # gone already, or not ours to remove
    return removed


@contextmanager
def atomic_path(path: str | os.PathLike, what: str = "this file") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it replaces ``path`` only if the block succeeds.

    Readers therefore see either the old file or the complete new one, never a torn write. An OSError
    while preparing, writing (inside the block) or renaming becomes a one-line :class:`OutputError`
    naming ``path`` and ``what``; the temporary file is removed whatever happens.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path)
        fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path), suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise write_error(path, what, exc) from None
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes 0600 (and some writers recreate the file): results are meant to be shared
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    except OSError as exc:
        raise write_error(path, what, exc) from None
    finally:
        try:
            tmp_path.unlink()
        except OSError:
            pass  # renamed into place, or never created


def write_json(path: str | os.PathLike, obj: Any, what: str = "JSON") -> None:
    with atomic_path(path, what) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


def save_weights(path: str | os.PathLike, state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None,
                 what: str = "weights") -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    with atomic_path(path, what) as tmp:
        try:
            save_file(state, str(tmp), metadata=metadata)
        except OSError:
            raise
        except Exception as exc:  # safetensors reports I/O errors as its own type, errno in the text
            raise as_os_error(exc) from exc


def as_os_error(exc: BaseException) -> BaseException:
    """An OSError for a library's wrapped I/O failure, else ``exc`` itself.

    safetensors says ``Os { code: 28, ... }`` and h5py, for some failed writes, raises RuntimeError
    with ``errno = 28`` in its text: both are a full disk, and should read as one.
    """
    import re

    if isinstance(exc, OSError) and exc.errno:
        return exc
    match = re.search(r"(?:Os \{ code: |errno = )(\d+)", str(exc))
    return OSError(int(match.group(1)), os.strerror(int(match.group(1)))) if match and int(match.group(1)) else exc


def load_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a state dict from ``.safetensors`` or a torch checkpoint, never executing pickled code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or truncated files raise many different types
        raise CheckpointError(f"{path}: cannot read weights ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a state dict, found {type(obj).__name__}")
    return obj


_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}


def read_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A ``.safetensors`` file read tensor by tensor into freshly allocated memory, without a mapping.

    Why not :func:`load_weights`: safetensors maps the file, and its tensors sit at 8-byte-aligned
    offsets, where CPU kernels take other code paths (a model loaded onto them with ``assign=True``
    scores differently in the last bits from the same model loaded by copy). Reading each tensor into
    its own 64-byte-aligned buffer costs the model's size once, like the mapping, and keeps results
    bit for bit.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    state: dict[str, torch.Tensor] = {}
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            if not 0 < size <= path.stat().st_size - 8:
                raise ValueError("not a safetensors file (bad header length)")
            header = json.loads(f.read(size))
            start = 8 + size
            for name, info in header.items():
                if name == "__metadata__":
                    continue
                tensor = torch.empty(info["shape"], dtype=_SAFETENSORS_DTYPES[info["dtype"]])
                begin, end = info["data_offsets"]
                if end - begin != tensor.numel() * tensor.element_size():
                    raise ValueError(f"{name}: {end - begin} bytes for shape {info['shape']}")
                if tensor.numel():
                    f.seek(start + begin)
                    if f.readinto(tensor.reshape(-1).view(torch.uint8).numpy()) != end - begin:
                        raise EOFError(f"{name}: the file ends inside it")
                state[name] = tensor
    except (OSError, ValueError, KeyError, TypeError, EOFError) as exc:
        raise CheckpointError(f"{path}: cannot read weights ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    return state


@contextmanager
def atomic_folder(out: str | os.PathLike, force: bool = False,
                  finished_elsewhere: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``out``; it becomes ``out`` only if the block succeeds.

    ``finished_elsewhere(out)``: for builds that several processes may run at once (the mini dataset):
    when another process has finished ``out`` meanwhile, its folder is kept and this one dropped.
    """
    out = Path(out)
    if out.exists() and not force:
        raise CheckpointError(f"{out}: already exists; choose another -o or pass --force to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; results are meant to be shared
    try:
        yield tmp
        if finished_elsewhere is not None and finished_elsewhere(out):
            return
        for path in tmp.rglob("*"):  # safetensors and mkdtemp create owner-only files
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~_umask())
        if out.exists():
            old = out.with_name(f".{out.name}.{os.getpid()}.old")
            os.replace(out, old)
            os.replace(tmp, out)
            if old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink()
        else:
            try:
                os.replace(tmp, out)
            except OSError:
                if finished_elsewhere is None or not finished_elsewhere(out):  # not a concurrent build: a real failure
                    raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
