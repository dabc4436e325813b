"""Load a model version into ONNX Runtime: verify, check the graph and contract, warm up."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort

from driftline.schemas.contracts import IMAGE_CHANNELS, IMAGE_SIZE, SENSOR_CHANNELS, SENSOR_SAMPLES
from driftline.schemas.messages import MODALITY_IMAGE, MODALITY_SENSOR, ModelVersion, TensorSpec
from driftline.services.runtime import artifacts
from driftline.services.runtime.artifacts import ArtifactRejected, ArtifactStore, fetch_trusted

CANARY_BATCH = 4


# Bounded rejection reasons: they label the swap metric.
REJECT_FETCH = artifacts.REJECT_FETCH
REJECT_DIGEST = artifacts.REJECT_DIGEST
REJECT_SIGNATURE = artifacts.REJECT_SIGNATURE
REJECT_GRAPH = "graph"
REJECT_CONTRACT = "contract"
REJECT_CANARY = "canary"
REJECT_UNEXPECTED = "unexpected"  # a failure no check names: logged with its traceback


class ModelRejected(RuntimeError):
    """A model version that must not serve; `reason` is one of the REJECT_* codes."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class LoadedModel:
    """A verified, warmed-up ONNX Runtime session and the version it serves."""

    version: ModelVersion
    session: ort.InferenceSession
    input_name: str
    output_name: str

    def predict(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        out: npt.NDArray[np.float32] = self.session.run(
            [self.output_name], {self.input_name: batch}
        )[0]
        return out


def session_options(intra_op_threads: int) -> ort.SessionOptions:
    """Options for a small shared CPU: fixed thread counts, no spin-waiting between batches."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = intra_op_threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return opts


def providers() -> list[str]:
    """CUDA first when onnxruntime-gpu sees a GPU, CPU always."""
    available = ort.get_available_providers()
    chosen = [p for p in ("CUDAExecutionProvider",) if p in available]
    return [*chosen, "CPUExecutionProvider"]


# An image model's own input size: the decoder resizes every photo to it (images.py refuses
# photos under 32 pixels a side; past 1024 a side one event's input alone is 12 MiB).
IMAGE_SIDE_MIN = 32
IMAGE_SIDE_MAX = 1024
_ONNX_DTYPES: dict[int, str] = {
    int(onnx.TensorProto.FLOAT): "float32",
    int(onnx.TensorProto.INT64): "int64",
}


def expected_input_shape(modality: str, graph_shape: Sequence[object] = ()) -> tuple[int, ...]:
    """The per-event input shape of a modality's contract (batch axis excluded).

    Sensors: the fixed channels x samples. Images: 3 channels (RGB, NCHW) at the height and
    width the graph itself declares, fixed and within IMAGE_SIDE_MIN..IMAGE_SIDE_MAX; with no
    such graph shape, the built-in models' IMAGE_SIZE.
    """
    if modality == MODALITY_SENSOR:
        return (len(SENSOR_CHANNELS), SENSOR_SAMPLES)
    if modality == MODALITY_IMAGE:
        sides = [d for d in tuple(graph_shape)[2:] if isinstance(d, int)]
        fits = all(IMAGE_SIDE_MIN <= d <= IMAGE_SIDE_MAX for d in sides)
        if len(graph_shape) == 4 and len(sides) == 2 and fits:
            return (IMAGE_CHANNELS, *sides)
        return (IMAGE_CHANNELS, IMAGE_SIZE, IMAGE_SIZE)
    raise ModelRejected(REJECT_CONTRACT, f"modality {modality!r} has no serving contract")


def _contract_text(modality: str, want: tuple[int, ...]) -> str:
    if modality == MODALITY_IMAGE:
        return (
            f"float32 [batch, {IMAGE_CHANNELS}, height, width] with a fixed height and width "
            f"of {IMAGE_SIDE_MIN} to {IMAGE_SIDE_MAX}"
        )
    return f"float32 [batch, {', '.join(map(str, want))}]"


def tensor_specs(values: Sequence[onnx.ValueInfoProto]) -> list[TensorSpec]:
    """A graph's inputs or outputs as a record's I/O signature (-1 for a dynamic axis)."""
    specs = []
    for v in values:
        t = v.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        dtype = _ONNX_DTYPES.get(int(t.elem_type), "unknown")
        specs.append(TensorSpec(name=v.name, dtype=dtype, shape=shape))
    return specs


def check_graph(data: bytes) -> onnx.ModelProto:
    """The parsed graph, refused (ModelRejected, REJECT_GRAPH) unless it is valid ONNX in one
    self-contained file."""
    try:
        proto = onnx.load_from_string(data)
    except Exception as exc:  # protobuf errors vary by version
        raise ModelRejected(REJECT_GRAPH, f"not a valid ONNX graph: {exc}") from exc
    # A served graph is one self-contained file: a reference to external data could make the
    # runtime read any path on this machine, so it is refused before anything else looks.
    for tensor in proto.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            raise ModelRejected(
                REJECT_GRAPH, f"initializer {tensor.name!r} points at external data; refused"
            )
    try:
        onnx.checker.check_model(proto)
    except Exception as exc:  # checker errors vary by version
        raise ModelRejected(REJECT_GRAPH, f"not a valid ONNX graph: {exc}") from exc
    return proto


def _check_contract(
    session: ort.InferenceSession, modality: str, n_classes: int
) -> tuple[str, str, tuple[int, ...]]:
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(outputs) != 1:
        raise ModelRejected(
            REJECT_CONTRACT, f"expected 1 input and 1 output, got {len(inputs)} and {len(outputs)}"
        )
    shape = tuple(inputs[0].shape)
    want = expected_input_shape(modality, shape)
    if inputs[0].type != "tensor(float)" or len(shape) != len(want) + 1 or shape[1:] != want:
        raise ModelRejected(
            REJECT_CONTRACT,
            f"input {inputs[0].name} is {inputs[0].type} {list(shape)}, "
            f"the {modality} contract is {_contract_text(modality, want)}",
        )
    if isinstance(shape[0], int) and shape[0] != -1:
        raise ModelRejected(
            REJECT_CONTRACT, f"input batch axis is fixed at {shape[0]}; it must be dynamic"
        )
    out_shape = tuple(outputs[0].shape)
    if len(out_shape) != 2 or out_shape[1] != n_classes:
        raise ModelRejected(
            REJECT_CONTRACT,
            f"output {outputs[0].name} is {list(out_shape)}, expected [batch, {n_classes}] "
            f"for {n_classes} classes",
        )
    return inputs[0].name, outputs[0].name, want


def _open(
    data: bytes, modality: str, n_classes: int, intra_op_threads: int
) -> tuple[ort.InferenceSession, str, str, tuple[int, ...]]:
    """Graph check, session, I/O contract and a canary batch: what every servable graph passes."""
    check_graph(data)
    try:
        session = ort.InferenceSession(
            data, sess_options=session_options(intra_op_threads), providers=providers()
        )
    except Exception as exc:
        raise ModelRejected(REJECT_GRAPH, f"ONNX Runtime cannot load it: {exc}") from exc
    input_name, output_name, event_shape = _check_contract(session, modality, n_classes)
    canary = np.zeros((CANARY_BATCH, *event_shape), dtype=np.float32)
    try:
        probs = session.run([output_name], {input_name: canary})[0]
    except Exception as exc:
        raise ModelRejected(REJECT_CANARY, f"the canary batch does not run: {exc}") from exc
    if probs.shape != (CANARY_BATCH, n_classes) or not np.isfinite(probs).all():
        raise ModelRejected(
            REJECT_CANARY, f"canary batch gave {probs.shape} with non-finite or wrong-sized output"
        )
    if not np.allclose(probs.sum(axis=1), 1.0, atol=1e-3):
        raise ModelRejected(REJECT_CANARY, "outputs are not probabilities (rows do not sum to 1)")
    return session, input_name, output_name, event_shape


def check_servable(
    data: bytes, modality: str, n_classes: int
) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Every check a consumer makes of a graph before it serves, minus the record's own
    (digest, signature): for `models publish`, before anything is published. Returns the
    graph's I/O signature; raises ModelRejected."""
    _open(data, modality, n_classes, intra_op_threads=1)
    proto = onnx.load_from_string(data)
    return tensor_specs(list(proto.graph.input)), tensor_specs(list(proto.graph.output))


def load(
    mv: ModelVersion,
    store: ArtifactStore,
    intra_op_threads: int = 1,
    public_key: str | None = None,
) -> LoadedModel:
    """Fetch, verify, check and warm up a version; raises ModelRejected if it must not serve.

    Order: bytes and digest first, then the signature over the record (when a public key is
    configured), then the graph, the I/O contract of the modality and a canary batch. Only a
    version that passes all of them is returned; the caller swaps it in between two batches.
    """
    try:
        data = fetch_trusted(store, mv, public_key)
    except ArtifactRejected as exc:
        raise ModelRejected(exc.reason, str(exc)) from exc
    session, input_name, output_name, event_shape = _open(
        data, mv.modality, len(mv.classes), intra_op_threads
    )
    # The image decoder resizes photos to the size in the record's I/O signature (handler.py),
    # so the record must say what the graph takes.
    declared = tuple(mv.inputs[0].shape[1:]) if mv.inputs else event_shape
    if declared != event_shape:
        raise ModelRejected(
            REJECT_CONTRACT,
            f"the record says the input is [batch, {', '.join(map(str, declared))}], "
            f"the graph takes [batch, {', '.join(map(str, event_shape))}]",
        )
    return LoadedModel(mv, session, input_name, output_name)
