"""Reduced-precision ONNX graphs: int8 by ONNX Runtime static quantization, and float16.

Both take a float32 ONNX file that :mod:`kdiqa.export` has already checked against PyTorch and write a
new file; :mod:`kdiqa.export` then checks the result's *accuracy* on held-out images
(:mod:`kdiqa.calibration`), because a reduced-precision model cannot match the float one to 1e-4 and
the question a deploy engineer asks is whether it still ranks images as the float student does.

int8 — what is done, and why (measured by ``benchmarks/export_quantized.py`` on a 2-core AVX-512 VNNI
CPU, where int8 is 1.2-1.8x faster than float32 ONNX Runtime on EfficientNet-B0 and MobileNetV3-Large,
not 2x: profiled, the pointwise convolutions run 2.5x faster in int8, the depthwise ones slightly
slower, and the per-element ops of SiLU / hard-swish cost about what they cost in float32, where ONNX
Runtime fuses them into the convolutions):

- ``quant_pre_process`` first (shape inference and ONNX Runtime's graph optimisations, e.g. batch norms
  folded into convolutions), as ONNX Runtime's documentation asks, so ranges are measured on the graph
  that is quantized;
- ``ReduceMean`` over H and W keeping dims (timm's squeeze-excitation pooling) becomes the equivalent
  ``GlobalAveragePool``, which ONNX Runtime runs in int8 (``QLinearGlobalAveragePool``); left as a
  ``ReduceMean`` it runs in float between a dequantize and a quantize, and cost EfficientNet-B0
  13-16 % of its int8 time;
- the ends stay float32: the nodes before the first convolution or matrix product (the input's
  normalisation, and the local contrast normalisation of ``kdiqa_cnn_*``: a variance computed as a
  difference of box sums, which 8 bits destroy — the quickstart student fell from test SRCC 0.467 to
  0.301 with it quantized, 0.465 without), and the last layer and what follows it (so the score is not
  rounded to 256 levels, which would tie images the float student ranks apart); both are a sliver of
  the compute;
- QDQ format (quantize/dequantize pairs that ONNX Runtime fuses into int8 kernels): QOperator
  measured no faster beyond the noise of a shared machine (±15 % either way by row), and QDQ is the
  format ONNX Runtime recommends and other runtimes (TensorRT, QNN, OpenVINO) read;
- weights int8 symmetric *per channel* (the usual choice for CNNs: a per-tensor range is set by the
  widest channel, and depthwise channels differ widely; per-tensor measured no faster), activations
  uint8 asymmetric (the u8×s8 form VNNI multiplies natively), no ``reduce_range`` (only needed on
  CPUs without VNNI, where u8×s8 products can saturate; it doubled the quickstart's SRCC change, to
  -0.005, and measured no faster);
- MinMax calibration over the calibration images: ranges are the observed extremes.

float16 — ONNX Runtime's converter (``onnxruntime.transformers.float16``) with ``keep_io_types``: the
file takes and returns float32, as every kdiqa export does, with casts at the boundary inside the
graph, so callers (``kdiqa predict --model``) need no change. float16 halves the file and is the
precision GPUs and mobile NPUs run fast; CPUs mostly do not (on the benchmark's CPU it is slower than
float32, as ONNX Runtime computes most float16 CPU kernels through casts).
"""
from __future__ import annotations

import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from kdiqa.errors import KdiqaError, first_line

QUANT_FORMATS = ("qdq", "qoperator")
COMPUTE_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm"})  # where int8 pays
INPUT_NAME = "images"


class QuantizeError(KdiqaError):
    """A graph ONNX Runtime could not quantize or convert."""


def quantize_int8(src: str | Path, dst: str | Path, batches: Iterable[np.ndarray], quant_format: str = "qdq",
                  per_channel: bool = True, reduce_range: bool = False, rewrite_pooling: bool = True) -> dict[str, Any]:
    """Statically quantize the float32 ONNX file ``src`` into ``dst``; ``batches`` are calibration inputs
    (float32 NCHW, each shaped as the graph's input accepts). Returns what was done, for the sidecar.

    The defaults are what ``kdiqa export --quantize int8`` uses; the others exist so that
    ``benchmarks/export_quantized.py`` can show what each choice costs or gains.
    """
    # onnxruntime's quantization tools are an optional dependency (the `export` extra): imported on use
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    if quant_format not in QUANT_FORMATS:
        raise QuantizeError(f"quantize: unknown format {quant_format!r} (choose from {', '.join(QUANT_FORMATS)})")
    counted = _Counted(batches)

    class Reader(CalibrationDataReader):
        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(counted, None)
            return None if batch is None else {INPUT_NAME: batch}

    with tempfile.TemporaryDirectory(prefix="kdiqa-quantize-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        try:
            quant_pre_process(str(src), str(prepared))
            rewritten = pool_as_global_average(prepared) if rewrite_pooling else 0
            kept_float = float_ends(prepared)
            quantize_static(
                str(prepared), str(dst), Reader(),
                quant_format=QuantFormat.QDQ if quant_format == "qdq" else QuantFormat.QOperator,
                per_channel=per_channel, reduce_range=reduce_range,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=kept_float,
            )
        except KdiqaError:
            raise
        except Exception as exc:  # onnxruntime's tools raise many exception types on graphs they cannot handle
            raise QuantizeError(f"{src}: ONNX Runtime could not quantize this graph ({first_line(exc)})") from None
    if counted.images == 0:
        raise QuantizeError("quantize: no calibration images")
    return {
        "method": "onnxruntime static quantization",
        "format": quant_format.upper() if quant_format == "qdq" else "QOperator",
        "weights": "int8, symmetric, " + ("per channel" if per_channel else "per tensor"),
        "activations": "uint8, asymmetric, per tensor",
        "reduce_range": reduce_range,
        "calibrate_method": "minmax",
        "calibration_images": counted.images,
        "reduce_mean_as_global_average_pool": rewritten,
        "float_nodes": len(kept_float),
    }


def convert_fp16(src: str | Path, dst: str | Path) -> dict[str, Any]:
    """Convert the float32 ONNX file ``src`` to float16 weights and compute, float32 inputs and outputs."""
    import onnx

    # onnxruntime's float16 converter is part of the optional export extra: imported on use
    from onnxruntime.transformers.float16 import convert_float_to_float16

    try:
        model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
        onnx.save(model, str(dst))
    except Exception as exc:
        raise QuantizeError(f"{src}: ONNX Runtime could not convert this graph to float16 ({first_line(exc)})") from None
    return {"method": "onnxruntime float16 conversion", "weights": "float16", "inputs_and_outputs": "float32 (cast inside the graph)"}


def pool_as_global_average(path: str | Path) -> int:
    """Rewrite ``ReduceMean(axes=[2, 3] or [-2, -1], keepdims=1)`` of 4-D tensors as ``GlobalAveragePool``
    in place (the same numbers; one ONNX Runtime quantizes); returns how many nodes changed."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))  # the rank of each ReduceMean's input
    graph = model.graph
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in [*graph.value_info, *graph.input, *graph.output]}
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    changed = 0
    for node in graph.node:
        if node.op_type != "ReduceMean" or ranks.get(node.input[0]) != 4:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        axes = attrs.get("axes")
        if axes is None and len(node.input) > 1:  # opset 18: axes is an input
            axes = constants.get(node.input[1])
        if axes is None or sorted(int(a) % 4 for a in np.asarray(axes).reshape(-1)) != [2, 3] or attrs.get("keepdims", 1) != 1:
            continue
        node.op_type = "GlobalAveragePool"
        del node.attribute[:]
        del node.input[1:]
        changed += 1
    if changed:
        onnx.save(model, str(path))
    return changed


def float_ends(path: str | Path) -> list[str]:
    """Names of the nodes kept in float: those with no convolution or matrix product upstream (input
    preprocessing), and those with none downstream (the last such layer, and what follows it)."""
    import onnx

    nodes = list(onnx.load(str(path)).graph.node)  # ONNX graphs are stored in topological order
    producer = {out: i for i, node in enumerate(nodes) for out in node.output}
    consumers: dict[int, list[int]] = {}
    for i, node in enumerate(nodes):
        for name in node.input:
            if name in producer:
                consumers.setdefault(producer[name], []).append(i)
    computes = [node.op_type in COMPUTE_OPS for node in nodes]
    upstream = [False] * len(nodes)
    for i, node in enumerate(nodes):
        upstream[i] = any(upstream[j] or computes[j] for j in (producer[n] for n in node.input if n in producer))
    downstream = [False] * len(nodes)
    for i in reversed(range(len(nodes))):
        downstream[i] = any(downstream[j] or computes[j] for j in consumers.get(i, []))
    ends = [i for i in range(len(nodes)) if (not upstream[i] and not computes[i]) or not downstream[i]]
    return [nodes[i].name for i in ends if nodes[i].name]  # the quantizer names what it excludes by node name


class _Counted(Iterator[np.ndarray]):
    """Pass batches through, counting images; each batch as contiguous float32."""

    def __init__(self, batches: Iterable[np.ndarray]):
        self._it = iter(batches)
        self.images = 0

    def __next__(self) -> np.ndarray:
        batch = np.ascontiguousarray(next(self._it), dtype=np.float32)
        self.images += int(batch.shape[0])
        return batch
