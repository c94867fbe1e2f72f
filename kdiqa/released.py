"""Reading the DP-IQA authors' released ``.pth`` files safely, and telling what each one holds.

The released files (RomGai/DP-IQA) are ``torch.save(model.state_dict(), ...)`` of the official teacher
(``{dataset}_model_plcc_best.pth``, ~4.3 GB: VAE, U-Net, adapters, decoder) or student
(``{dataset}_student_model_plcc_best.pth``): plain tensors, so ``torch.load(weights_only=True)`` reads
them without running pickled code. They are read memory-mapped (``mmap=True``): a tensor stays backed
by the file until something writes to it, so loading it with ``load_state_dict(assign=True)`` into a
model built on the meta device never holds a second copy of a 1B-parameter model in memory.

Every way a file can be wrong is one line naming the file: a whole pickled module (the old demo's
``*_model_pack.pth``), a truncated or corrupt file, a state dict of some other model, or the teacher
where the student was expected (and the reverse).
"""
from __future__ import annotations

import os
import pickle
import re
from collections.abc import Iterable
from pathlib import Path

import torch

from kdiqa.errors import CheckpointError

TEACHER, STUDENT = "teacher", "student"
# key prefixes only the official teacher / student state dicts have (either one marks the kind)
_MARKERS = {TEACHER: ("QFD.",), STUDENT: ("base_model.features.", "conv_transpose.")}
_DESCRIBE = {
    TEACHER: "the released DP-IQA teacher ({dataset}_model_plcc_best.pth)",
    STUDENT: "the released DP-IQA student ({dataset}_student_model_plcc_best.pth)",
}
# where a file of each kind goes
_USE = {
    TEACHER: "convert it with `kdiqa convert dpiqa-official FILE --prompt-embeddings E.pth -o DIR`, or give it as teacher.options.official_weights",
    STUDENT: "convert it with `kdiqa convert dpiqa-official-student FILE -o DIR`, or give it as student.options.weights",
}
_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def read_released(path: str | os.PathLike, expect: str) -> dict[str, torch.Tensor]:
    """The state dict of a released file that must hold ``expect`` (``teacher`` or ``student``)."""
    path = Path(path).expanduser()
    if not path.is_file():
        what = "a folder, not" if path.is_dir() else "file not found; expected"
        raise CheckpointError(f"{path}: {what} {_DESCRIBE[expect]}")
    if path.suffix == ".safetensors":
        raise CheckpointError(
            f"{path}: a safetensors file, not {_DESCRIBE[expect]} (.pth); a folder `kdiqa convert` wrote is read as it "
            "is: teacher.checkpoint, predict --model DIR"
        )
    state = _load(path)
    kind = released_kind(state)
    if kind == expect:
        return state
    if kind is not None:
        raise CheckpointError(f"{path}: this is {_DESCRIBE[kind]}, not {_DESCRIBE[expect]}; {_USE[kind]}")
    sample = ", ".join(list(state)[:3]) or "no keys"
    raise CheckpointError(
        f"{path}: not {_DESCRIBE[expect]}: none of its keys ({sample}, ...) starts with "
        f"{' or '.join(_MARKERS[expect])} as in the official layout"
    )


def released_kind(state: dict[str, torch.Tensor]) -> str | None:
    """``teacher``, ``student`` or None, from the key prefixes only the official layouts have (the rest
    of a file of the right kind is checked key by key when it is loaded)."""
    for kind, prefixes in _MARKERS.items():
        if any(k.startswith(prefixes) for k in state):
            return kind
    return None


def _load(path: Path) -> dict[str, torch.Tensor]:
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap can only be used" not in str(exc):
                raise
            # the legacy (pre-1.6, non-zip) format cannot be mapped: read it into memory instead
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = _GLOBAL.search(str(exc))
        if found is None and "safe_globals" not in str(exc):
            raise CheckpointError(f"{path}: cannot read it: corrupt, or not a torch checkpoint") from None
        what = f" ({found.group(1)})" if found else ""
        raise CheckpointError(
            f"{path}: holds a pickled Python object{what}, not a state dict of tensors: a whole pickled model such as "
            "the old demo's *_model_pack.pth? kdiqa never unpickles code; load it in the official code, save "
            "`torch.save(model.state_dict(), 'model.pth')` and give that file"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path}: cannot read it: truncated or corrupt ({detail[:120]}); download it again"
        ) from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors, found {type(obj).__name__}")
    # DataParallel / DDP wrappers save every key under "module."
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj



def rename(key: str, rules: Iterable[tuple[str, str]]) -> str | None:
    """``key`` under the first (source prefix, target prefix) rule that matches; a prefix that does not
    end in a dot matches one whole key. None when no rule matches."""
    for source, target in rules:
        if key == source or (source.endswith(".") and key.startswith(source)):
            return target + key[len(source):]
    return None


def map_released(
    state: dict[str, torch.Tensor],
    rules: list[tuple[str, str]],
    own: dict[str, torch.Tensor],
    source: str | os.PathLike,
    what: str,
    ignored_modules: tuple[str, ...] = (),
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``state`` renamed by ``rules`` onto ``own`` (a module's state dict; meta tensors will do), and the
    keys knowingly ignored. Every other key must land on a tensor of the same shape and every tensor of
    ``own`` must be covered, else a one-line :class:`CheckpointError` naming the first offending key
    (official name first). Floating tensors of another dtype are cast to ``own``'s (a copy of those only).
    """
    mapped: dict[str, torch.Tensor] = {}
    ignored, unknown = [], []
    for key, value in state.items():
        if any(key == m or key.startswith(m + ".") for m in ignored_modules):
            ignored.append(key)
            continue
        target = rename(key, rules)
        if target is None or target not in own:
            unknown.append(key)
            continue
        expected = own[target]
        if tuple(value.shape) != tuple(expected.shape):
            raise CheckpointError(
                f"{source}: key {key} has shape {tuple(value.shape)}, kdiqa's {target} needs {tuple(expected.shape)} "
                f"(weights of another architecture than this {what}?)"
            )
        cast = value.is_floating_point() and value.dtype != expected.dtype
        mapped[target] = value.to(expected.dtype) if cast else value
    if unknown:
        raise CheckpointError(
            f"{source}: unexpected key {unknown[0]!r} ({len(unknown)} in all) that this {what} does not have: "
            "weights of another architecture?"
        )
    missing = [k for k in own if k not in mapped]
    if missing:
        official = rename(missing[0], [(t, s) for s, t in rules]) or missing[0]
        raise CheckpointError(
            f"{source}: missing key {official!r} (kdiqa's {missing[0]}; {len(missing)} missing in all) for this {what}: "
            "an incomplete state dict, or weights of another architecture?"
        )
    return mapped, ignored
