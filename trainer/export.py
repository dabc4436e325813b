"""Export a torch classifier to ONNX with a dynamic batch axis, and prove ONNX Runtime agrees."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import torch
from torch import nn

from driftline.schemas.contracts import PROBABILITIES_OUTPUT_NAME
from driftline.schemas.messages import TensorSpec
from driftline.trainer.models import WithProbabilities
from driftline.trainer.tracing import GUARD

PARITY_TOLERANCE = 1e-4
_ONNX_DTYPES: dict[int, str] = {
    int(onnx.TensorProto.FLOAT): "float32",
    int(onnx.TensorProto.INT64): "int64",
}


class ExportError(RuntimeError):
    """The exported graph is invalid or disagrees with torch."""


@dataclass(frozen=True)
class ExportedModel:
    onnx_bytes: bytes
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    parity_max_abs_diff: float


def _specs(values: list[onnx.ValueInfoProto]) -> list[TensorSpec]:
    specs = []
    for v in values:
        t = v.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        specs.append(
            TensorSpec(
                name=v.name, dtype=_ONNX_DTYPES.get(int(t.elem_type), "unknown"), shape=shape
            )
        )
    return specs


def export_classifier(
    model: nn.Module, example: npt.NDArray[np.float32], input_name: str
) -> ExportedModel:
    """ONNX of softmax(model(x)), passed by the onnx checker and matching torch on `example`."""
    served = WithProbabilities(model).eval()
    x = torch.from_numpy(example)
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    # The exporter logs notes about optional torchvision ops; they are not ours to act on.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with GUARD.export():  # alone: torch.export traces through process-wide state
        program = torch.onnx.export(
            served,
            (x,),
            None,
            input_names=[input_name],
            output_names=[PROBABILITIES_OUTPUT_NAME],
            dynamic_shapes={"x": {0: batch}},
            dynamo=True,
            verbose=False,
        )
    if program is None:
        raise ExportError("torch.onnx.export returned no program")
    proto = program.model_proto
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"onnx checker rejected the graph: {exc}") from exc
    data = proto.SerializeToString()
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    got = session.run(None, {input_name: example})[0]
    with torch.no_grad(), GUARD.step():
        want = served(x).numpy()
    diff = float(np.abs(got - want).max()) if got.size else 0.0
    if not diff <= PARITY_TOLERANCE:
        raise ExportError(f"ONNX Runtime and torch differ by {diff:.2e} > {PARITY_TOLERANCE:.0e}")
    return ExportedModel(
        onnx_bytes=data,
        inputs=_specs(list(proto.graph.input)),
        outputs=_specs(list(proto.graph.output)),
        parity_max_abs_diff=diff,
    )


def onnx_probabilities(
    onnx_bytes: bytes, x: npt.NDArray[np.float32], batch: int = 512, threads: int = 1
) -> npt.NDArray[np.float32]:
    """Class probabilities of a served graph on x, scored as consumers score: ONNX Runtime, CPU."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(
        onnx_bytes, sess_options=opts, providers=["CPUExecutionProvider"]
    )
    name = session.get_inputs()[0].name
    out = [session.run(None, {name: x[i : i + batch]})[0] for i in range(0, len(x), batch)]
    if not out:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(out).astype(np.float32, copy=False)
