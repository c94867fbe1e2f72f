"""Any ONNX IQA model as a kdiqa teacher, run through onnxruntime, registered as ``onnx``.

For models people already exported: a kdiqa student export, DP-IQA's published ONNX student, another
tool's export. The view (float RGB in [0, 1], NCHW) is brought to the model's input convention:

1. resized (bilinear, antialiased) to ``input_size`` when the view has another size;
2. scaled from [0, 1] to ``input_range`` (e.g. [0, 255]);
3. reordered to ``color`` (RGB or BGR);
4. normalised ``(x - mean) / std``, ``mean``/``std`` in the model's channel order and ``input_range``
   units (none when the graph normalises itself);
5. laid out as ``layout`` (NCHW or NHWC).

The score output (``output``; default the first) is one number per image, mapped linearly onto kdiqa's
[0, 1], higher = better, with ``score_range`` and ``lower_better``; a (B, K) output of probabilities is
a distribution over the scores 1..K (its mean is the raw score, default range [1, K]). A foreign
model's output scale is not knowable from the file, so its ``score_range`` must be given. Further
outputs can be stored as features (``features: {name: output name}``).

A kdiqa export (``kdiqa export``) describes its own input in embedded metadata (or its ``.json``
sidecar): size, range, normalisation inside the graph, ``score`` on kdiqa's scale and ``dist``; these
fill every option the recipe leaves out.

The model file itself is part of the teacher's state (one uint8 tensor, the module's *extra state*):
``save_pretrained`` copies it into ``model.safetensors``, so a saved ONNX teacher needs nothing else, and
the cache fingerprint covers the model's bytes along with the resolved options.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from kdiqa.config.schema import check_choice
from kdiqa.errors import CheckpointError, ConfigError, KdiqaError, first_line
from kdiqa.exported import METADATA_KEY, require_onnxruntime, sidecar_path
from kdiqa.registry import TEACHERS
from kdiqa.teachers.base import Teacher, TeacherOutput
from kdiqa.teachers.external.common import ScoreScale, check_range_option

AT = "teacher.options"
COLORS = ("RGB", "BGR")
LAYOUTS = ("NCHW", "NHWC")
PROBABILITY_TOLERANCE = 1e-3


def open_session(model: bytes | str, where: str) -> Any:
    """An onnxruntime session on the CPU, with as many threads as torch uses (recipes set ``threads``)."""
    ort = require_onnxruntime()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = max(1, torch.get_num_threads())
    try:
        return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # corrupt files raise several onnxruntime exception types
        raise CheckpointError(
            f"{where}: onnxruntime cannot load this model ({first_line(exc)}); a model with external data files must be saved as one file"
        ) from None


def kdiqa_metadata(session: Any, path: Path) -> dict[str, Any]:
    """The input convention a kdiqa export embeds (or its sidecar), else {}."""
    import json

    text = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    if not text and sidecar_path(path).is_file():
        text = sidecar_path(path).read_text()
    if not text:
        return {}
    try:
        meta = json.loads(text)
    except json.JSONDecodeError:
        raise CheckpointError(f"{path}: its kdiqa metadata is not valid JSON") from None
    return meta if isinstance(meta, dict) and isinstance(meta.get("input"), dict) else {}


def _pair(at: str, value: Any) -> list[int] | None:
    if value is None:
        return None
    if isinstance(value, int):
        return [value, value]
    try:
        h, w = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"{at}: expected a side or [height, width], got {value!r}") from None
    if h < 1 or w < 1:
        raise ConfigError(f"{at}: sides must be positive, got {value!r}")
    return [h, w]


def _channels(at: str, value: Any) -> list[float] | None:
    if value is None:
        return None
    try:
        values = [float(v) for v in (value if hasattr(value, "__iter__") and not isinstance(value, str) else [value] * 3)]
    except (TypeError, ValueError):
        raise ConfigError(f"{at}: expected three numbers (one per channel), got {value!r}") from None
    if len(values) == 1:
        values = values * 3
    if len(values) != 3:
        raise ConfigError(f"{at}: expected three numbers (one per channel), got {value!r}")
    return values


@TEACHERS.register("onnx")
class OnnxTeacher(Teacher):
    """An ONNX model as a teacher. Options (``teacher.options``; see the module docstring):

      path          the .onnx file (read once; the teacher then keeps its bytes)
      input_size    [height, width] the model takes (default: the graph's static size, else the view's)
      input_range   [low, high] of its pixel values (default [0, 1])
      mean, std     per-channel normalisation, in the model's channel order and input_range units (default: none)
      color         RGB (default) or BGR;  layout: NCHW (default) or NHWC
      output        the score output's name (default: the first output)
      dist_output   an output of score probabilities over 1..K, stored as the teacher's distribution
      score_range   [low, high] of the raw score (required unless the model is a kdiqa export)
      lower_better  whether a lower raw score means better quality (default false)
      features      {name: output name}: further outputs stored as features
    """

    name = "onnx"
    needs_fitting = False
    bench_note = "runs in onnxruntime: parameters, FLOPs and CPU memory are not counted"
    weight_options = ("path",)

    def __init__(
        self,
        input_size: Any = None,
        input_range: list[float] | None = None,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        color: str = "RGB",
        layout: str = "NCHW",
        output: str | None = None,
        dist_output: str | None = None,
        score_range: list[float] | None = None,
        lower_better: bool = False,
        features: dict[str, str] | None = None,
        model_bytes: int = 0,
        initialised_from: dict[str, Any] | None = None,
    ):
        pixels, scores = check_range_option(f"{AT}.input_range", input_range), check_range_option(f"{AT}.score_range", score_range)
        options = {
            "input_size": _pair(f"{AT}.input_size", input_size),
            "input_range": list(pixels) if pixels else None,
            "mean": _channels(f"{AT}.mean", mean), "std": _channels(f"{AT}.std", std),
            "color": str(color).upper(), "layout": str(layout).upper(), "output": output, "dist_output": dist_output,
            "score_range": list(scores) if scores else None,
            "lower_better": bool(lower_better), "features": {str(k): str(v) for k, v in (features or {}).items()},
        }
        for key, choices in (("color", COLORS), ("layout", LAYOUTS)):
            check_choice(f"{AT}.{key}", options[key], choices)
        if options["std"] is not None and any(s == 0 for s in options["std"]):
            raise ConfigError(f"{AT}.std: must not be zero")
        if not model_bytes:
            raise ConfigError(f"{AT}.path: give the .onnx model file")
        if options["score_range"] is None:
            raise ConfigError(
                f"{AT}.score_range: the scale of this model's score is unknown (it is not a kdiqa export); "
                "give [low, high] of its raw scores, e.g. [1, 5] for a MOS model, [0, 1] if it already scores like kdiqa"
            )
        super().__init__(**options, model_bytes=int(model_bytes))
        self.scale = ScoreScale(float(options["score_range"][0]), float(options["score_range"][1]), options["lower_better"])
        self._model = torch.empty(int(model_bytes), dtype=torch.uint8)  # filled by from_file, or from the saved state
        self._session = None

    @classmethod
    def from_options(cls, path: str | None = None, **options: Any) -> OnnxTeacher:
        return cls.from_file(path, **options) if path else cls(**options)

    @classmethod
    def from_file(cls, path: str | Path, **options: Any) -> OnnxTeacher:
        """The model in an .onnx file; the options it leaves out come from its kdiqa metadata or its graph."""
        file = Path(path).expanduser()
        if not file.is_file():
            raise CheckpointError(f"{AT}.path: {file}: ONNX file not found")
        data = file.read_bytes()
        session = open_session(data, str(file))
        # the digest, not the file's name or place: a renamed or moved model keeps its caches valid
        digest = {"blake2b": hashlib.blake2b(data, digest_size=16).hexdigest()}
        teacher = cls(**_resolve(options, session, file), model_bytes=len(data), initialised_from=digest)
        teacher._model, teacher._session = torch.frombuffer(bytearray(data), dtype=torch.uint8), session
        return teacher

    # ----------------------------------------------------------------- the model's bytes as state
    def get_extra_state(self) -> torch.Tensor:
        return self._model

    def set_extra_state(self, state: Any) -> None:
        if not isinstance(state, torch.Tensor) or state.dtype != torch.uint8 or state.dim() != 1:
            raise CheckpointError("onnx teacher: the saved model bytes are not a 1-d uint8 tensor")
        self._model = state.detach().cpu()
        self._session = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_session"] = None  # an onnxruntime session is not picklable; it is reopened on demand
        return state

    @property
    def session(self) -> Any:
        if self._session is None:
            if self._model.is_meta:
                raise CheckpointError("onnx teacher: its model bytes were never loaded")
            self._session = open_session(self._model.numpy().tobytes(), "onnx teacher")
        return self._session

    # ----------------------------------------------------------------- scoring
    def prepare_input(self, images: torch.Tensor) -> np.ndarray:
        """Views (B, 3, H, W) in [0, 1] → the model's input array (see the module docstring)."""
        cfg = self.config
        x = images.detach().float().cpu()
        size = cfg["input_size"]
        if size is not None and list(x.shape[2:]) != list(size):
            x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
        if cfg["input_range"] is not None:
            low, high = cfg["input_range"]
            x = low + x * (high - low)
        if cfg["color"] == "BGR":
            x = x.flip(1)
        if cfg["mean"] is not None:
            x = x - torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
        if cfg["std"] is not None:
            x = x / torch.tensor(cfg["std"]).view(1, 3, 1, 1)
        if cfg["layout"] == "NHWC":
            x = x.permute(0, 2, 3, 1)
        return np.ascontiguousarray(x.numpy(), dtype=np.float32)

    def run(self, inputs: np.ndarray) -> dict[str, np.ndarray]:
        """Every output the teacher uses, for a batch; a fixed-batch graph is fed in padded chunks."""
        session = self.session
        names = [n for n in dict.fromkeys([self.config["output"], self.config["dist_output"], *self.config["features"].values()]) if n]
        feed = session.get_inputs()[0]
        fixed = feed.shape[0] if isinstance(feed.shape[0], int) and feed.shape[0] > 0 else None
        n = inputs.shape[0]
        chunks = [inputs] if fixed is None or fixed == n else [inputs[i : i + fixed] for i in range(0, n, fixed)]
        parts: list[list[np.ndarray]] = []
        for chunk in chunks:
            real = chunk.shape[0]
            if fixed is not None and real < fixed:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], fixed - real, axis=0)])
            try:
                out = session.run(names, {feed.name: chunk})
            except Exception as exc:
                raise KdiqaError(f"onnx teacher: onnxruntime failed on input {tuple(chunk.shape)} ({first_line(exc)})") from None
            parts.append([np.asarray(o)[:real] for o in out])
        return {name: np.concatenate([p[i] for p in parts]) for i, name in enumerate(names)}

    def forward(self, images: torch.Tensor) -> TeacherOutput:
        batch = images.shape[0]
        outputs = self.run(self.prepare_input(images))
        raw, dist = _score_and_dist(outputs[self.config["output"]], batch, self.config["output"])
        if self.config["dist_output"]:
            _, dist = _score_and_dist(outputs[self.config["dist_output"]], batch, self.config["dist_output"], dist_only=True)
        features = {name: torch.from_numpy(np.asarray(outputs[out], dtype=np.float32)).to(images.device)
                    for name, out in self.config["features"].items()}
        for name, value in features.items():
            if value.dim() == 0 or value.shape[0] != batch:
                raise KdiqaError(f"onnx teacher: output {self.config['features'][name]!r} has shape {tuple(value.shape)} for {batch} images")
        score = self.scale.to_unit(torch.from_numpy(raw)).to(images.device)
        return TeacherOutput(score=score, dist=None if dist is None else torch.from_numpy(dist).to(images.device), features=features)

    @staticmethod
    def describe() -> dict[str, Any]:
        """For ``kdiqa info teacher onnx``: the options and how a view reaches the model."""
        return {
            "teacher": "onnx",
            "runtime": "onnxruntime (CPU)",
            "options": {
                "path": "the .onnx file (its bytes are kept in the saved teacher)",
                "input_size": "[height, width]; default the graph's static size",
                "input_range": "[low, high] of pixel values; default [0, 1]",
                "mean/std": "per-channel normalisation in the model's channel order and input_range units; default none",
                "color/layout": "RGB|BGR, NCHW|NHWC; default RGB, NCHW",
                "output": "the score output; default the first (a (B, K) probability output is a distribution over 1..K)",
                "dist_output": "an output of probabilities over 1..K, stored as the distribution",
                "score_range/lower_better": "the raw score's [low, high] and direction; required unless a kdiqa export",
                "features": "{name: output name}: further outputs stored as features",
            },
            "kdiqa_exports": "their embedded metadata fills every option left out",
        }


def _resolve(options: dict[str, Any], session: Any, path: Path) -> dict[str, Any]:
    """Options left out, filled from a kdiqa export's metadata or the graph; names checked against the graph."""
    meta = kdiqa_metadata(session, path)
    inputs, outputs = session.get_inputs(), [o.name for o in session.get_outputs()]
    if len(inputs) != 1:
        raise ConfigError(f"{path}: the model takes {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); a teacher model takes one image batch")
    shape = list(inputs[0].shape)
    if len(shape) != 4:
        raise ConfigError(f"{path}: the model's input {inputs[0].name!r} has shape {shape}; expected 4 axes (a batch of images)")
    unset = dict.fromkeys(("input_size", "input_range", "output", "dist_output", "score_range"))
    resolved = {**unset, **options, "features": dict(options.get("features") or {})}
    if meta:
        spec = meta["input"]
        resolved["input_size"] = resolved["input_size"] or (list(spec["size"]) if spec.get("size") else None)
        resolved["input_range"] = resolved["input_range"] or list(spec.get("range") or (0.0, 1.0))
        resolved["output"] = resolved["output"] or ("score" if "score" in outputs else None)
        resolved["dist_output"] = resolved["dist_output"] or ("dist" if "dist" in outputs else None)
        resolved["score_range"] = resolved["score_range"] or [0.0, 1.0]  # kdiqa students score on kdiqa's scale
    spatial = shape[1:3] if str(options.get("layout", "NCHW")).upper() == "NHWC" else shape[2:4]
    if resolved["input_size"] is None and all(isinstance(d, int) and d > 0 for d in spatial):
        resolved["input_size"] = [int(d) for d in spatial]
    resolved["input_range"] = resolved["input_range"] or [0.0, 1.0]
    resolved["output"] = resolved["output"] or outputs[0]
    for key, name in [("output", resolved["output"]), ("dist_output", resolved["dist_output"]),
                      *((f"features.{k}", v) for k, v in resolved["features"].items())]:
        if name is not None and name not in outputs:
            raise ConfigError(f"{AT}.{key}: the model has no output {name!r} (it has: {', '.join(outputs)})")
    if resolved["score_range"] is None and resolved["dist_output"] is None:
        dims = next(o.shape for o in session.get_outputs() if o.name == resolved["output"])
        if len(dims) == 2 and isinstance(dims[1], int) and dims[1] > 1:
            resolved["score_range"] = [1.0, float(dims[1])]  # a distribution over 1..K: its mean lies in [1, K]
    return resolved


def _score_and_dist(value: np.ndarray, batch: int, name: str, dist_only: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """(raw score (B,), distribution (B, K) or None) from one output."""
    value = np.asarray(value, dtype=np.float32)
    flat = value.reshape(batch, -1) if value.size and value.shape[0] == batch else None
    if flat is None:
        raise KdiqaError(f"onnx teacher: output {name!r} has shape {value.shape} for {batch} images")
    if flat.shape[1] == 1 and not dist_only:
        return flat[:, 0], None
    sums = flat.sum(1)
    if (flat < -PROBABILITY_TOLERANCE).any() or not np.allclose(sums, 1.0, atol=PROBABILITY_TOLERANCE):
        raise KdiqaError(
            f"onnx teacher: output {name!r} has {flat.shape[1]} values per image that are not probabilities (rows sum to "
            f"{sums.min():.3g}..{sums.max():.3g}); name the score output as teacher.options.output, or export the softmax"
        )
    bins = np.arange(1, flat.shape[1] + 1, dtype=np.float32)
    return (flat * bins).sum(1), flat
