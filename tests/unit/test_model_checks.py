"""Model versions that must not serve are refused with a reason, before any swap."""

from __future__ import annotations

import time
from pathlib import Path

import msgspec
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from driftline.schemas.contracts import INSULATOR_CLASSES
from driftline.schemas.messages import Lineage, ModelVersion
from driftline.services.inference.model import (
    REJECT_CANARY,
    REJECT_CONTRACT,
    REJECT_GRAPH,
    REJECT_SIGNATURE,
    ModelRejected,
    load,
)
from driftline.services.runtime.artifacts import FsspecArtifactStore, sha256_hex
from driftline.services.runtime.signing import generate_keypair, sign

N_CLASSES = len(INSULATOR_CLASSES)


def graph(in_shape: list[object], softmax: bool = True, external: str | None = None) -> bytes:
    """x [batch, ...] -> mean over the last axis -> MatMul W -> (Softmax) -> probabilities."""
    w = numpy_helper.from_array(np.ones((in_shape[-2], N_CLASSES), dtype=np.float32), "W")  # type: ignore[arg-type]
    if external:
        w.data_location = TensorProto.EXTERNAL
        w.ClearField("raw_data")
        w.external_data.add(key="location", value=external)
    axes = numpy_helper.from_array(np.array([-1], dtype=np.int64), "axes")
    nodes = [
        helper.make_node("ReduceMean", ["x", "axes"], ["m"], keepdims=0),
        helper.make_node("MatMul", ["m", "W"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["p"], axis=1)
        if softmax
        else helper.make_node("Identity", ["logits"], ["p"]),
    ]
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["batch", N_CLASSES])],
        initializer=[w, axes],
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model.SerializeToString()


def version(tmp_path: Path, data: bytes, **extra: object) -> ModelVersion:
    uri = FsspecArtifactStore(tmp_path.as_uri()).put("m/model.onnx", data)
    fields: dict[str, object] = {
        "name": "insulator-sensor",
        "version": 1,
        "modality": "sensor",
        "artifact_uri": uri,
        "sha256": sha256_hex(data),
        "inputs": [],
        "outputs": [],
        "classes": list(INSULATOR_CLASSES),
        "lineage": Lineage(source="test"),
        "status": "champion",
        "created_time_ms": int(time.time() * 1000),
        **extra,
    }
    return ModelVersion(**fields)  # type: ignore[arg-type]


STORE = FsspecArtifactStore("file:///")


def test_a_fitting_graph_loads_and_scores(tmp_path: Path) -> None:
    model = load(version(tmp_path, graph(["batch", 4, 64])), STORE)
    probs = model.predict(np.ones((3, 4, 64), dtype=np.float32))
    assert probs.shape == (3, N_CLASSES)


@pytest.mark.parametrize(
    ("data", "reason", "match"),
    [
        (graph(["batch", 3, 64]), REJECT_CONTRACT, "contract is float32"),
        (graph([8, 4, 64]), REJECT_CONTRACT, "batch axis is fixed"),
        (graph(["batch", 4, 64], softmax=False), REJECT_CANARY, "not probabilities"),
        (graph(["batch", 4, 64], external="weights.bin"), REJECT_GRAPH, "external data"),
        (graph(["batch", 4, 64], external="../../etc/passwd"), REJECT_GRAPH, "external data"),
        (b"not an onnx graph at all", REJECT_GRAPH, "not a valid ONNX graph"),
    ],
    ids=[
        "wrong input shape",
        "fixed batch",
        "logits not probabilities",
        "external data",
        "external data outside",
        "junk",
    ],
)
def test_unfit_graphs_are_refused(tmp_path: Path, data: bytes, reason: str, match: str) -> None:
    with pytest.raises(ModelRejected, match=match) as caught:
        load(version(tmp_path, data), STORE)
    assert caught.value.reason == reason


def test_signatures_are_checked_when_a_key_is_configured(tmp_path: Path) -> None:
    private, public = generate_keypair()
    data = graph(["batch", 4, 64])
    unsigned = version(tmp_path, data)
    signed = msgspec.structs.replace(unsigned, signature=sign(private, unsigned))
    assert load(signed, STORE, public_key=public.decode()).version == signed
    for bad in (version(tmp_path, data), version(tmp_path, data, signature=b"x" * 64)):
        with pytest.raises(ModelRejected) as caught:
            load(bad, STORE, public_key=public.decode())
        assert caught.value.reason == REJECT_SIGNATURE
