"""`models publish` refuses, with one line and nothing written, any file no consumer would serve.

Every refusal here happens before the broker is asked anything (the bootstrap address points
at a closed port), so a refused publish provably writes no record; the artifact root stays
empty, so it writes no file either. What passes is checked for the I/O signature the record
will carry, and an image model of its own input size is served at that size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from driftline.schemas.contracts import INSULATOR_CLASSES
from driftline.schemas.messages import Lineage, ModelVersion
from driftline.services.cli import main
from driftline.services.inference.model import (
    REJECT_CONTRACT,
    ModelRejected,
    check_servable,
    load,
)
from driftline.services.inference.service import decoder_for
from driftline.services.inference.settings import InferenceSettings
from driftline.services.runtime.artifacts import FsspecArtifactStore, sha256_hex
from driftline.services.runtime.settings import KafkaSettings
from tests.unit.test_images import encode, photo, record

N = len(INSULATOR_CLASSES)
CLOSED_PORT = "127.0.0.1:9"  # nothing listens: a publish that got that far would fail there


def classifier(
    in_shape: list[object],
    n_out: int = N,
    *,
    softmax: bool = True,
    external: bool = False,
    broken_reshape: bool = False,
) -> bytes:
    """x [batch, C, ...] -> mean over the trailing axes -> MatMul [C, n_out] -> Softmax."""
    channels = int(str(in_shape[1])) if len(in_shape) > 1 else 1
    w = numpy_helper.from_array(np.ones((channels, n_out), dtype=np.float32), "W")
    if external:
        w.data_location = TensorProto.EXTERNAL
        w.ClearField("raw_data")
        w.external_data.add(key="location", value="weights.bin")
    axes = numpy_helper.from_array(np.arange(2, len(in_shape), dtype=np.int64), "axes")
    inits = [w, axes] if len(in_shape) > 2 else [w]
    nodes = [
        helper.make_node("ReduceMean", ["x", "axes"], ["m"], keepdims=0)
        if len(in_shape) > 2
        else helper.make_node("Identity", ["x"], ["m"])
    ]
    if broken_reshape:  # checks pass, ONNX Runtime fails when it runs: 4 rows into 7 columns
        inits.append(numpy_helper.from_array(np.array([-1, 7], dtype=np.int64), "shape"))
        nodes.append(helper.make_node("Reshape", ["m", "shape"], ["m2"]))
        nodes.append(helper.make_node("Reshape", ["m2", "shape0"], ["m3"]))
        inits.append(numpy_helper.from_array(np.array([-1, channels], dtype=np.int64), "shape0"))
        nodes.append(helper.make_node("MatMul", ["m3", "W"], ["logits"]))
    else:
        nodes.append(helper.make_node("MatMul", ["m", "W"], ["logits"]))
    nodes.append(
        helper.make_node("Softmax", ["logits"], ["p"], axis=1)
        if softmax
        else helper.make_node("Identity", ["logits"], ["p"])
    )
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["batch", n_out])],
        initializer=inits,
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model.SerializeToString()


def publish(
    tmp_path: Path, data: bytes, *flags: str, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str]:
    path = tmp_path / "model.onnx"
    path.write_bytes(data)
    root = tmp_path / "artifacts"
    code = main(
        [
            "models",
            "publish",
            str(path),
            "--bootstrap-servers",
            CLOSED_PORT,
            "--artifact-root",
            root.as_uri(),
            *flags,
        ]
    )
    assert not root.exists() or not any(root.iterdir()), "a refused publish wrote files"
    return code, capsys.readouterr().err


SENSOR = ["batch", 4, 64]


@pytest.mark.parametrize(
    ("data", "flags", "why"),
    [
        (b"not a protobuf at all \x00\xff" * 8, ["--modality", "sensor"], "graph: not a valid"),
        (
            classifier(["batch", 256]),
            ["--modality", "sensor"],
            "contract is float32 [batch, 4, 64]",
        ),
        (classifier(["batch", 4, 32]), ["--modality", "sensor"], "input x is tensor(float)"),
        (classifier([8, 4, 64]), ["--modality", "sensor"], "batch axis is fixed at 8"),
        (classifier(SENSOR), ["--modality", "image"], "image contract is float32"),
        (classifier(["batch", 3, 16, 16]), ["--modality", "image"], "32 to 1024"),
        (classifier(SENSOR, n_out=3), ["--modality", "sensor"], "expected [batch, 4] for 4"),
        (
            classifier(SENSOR),
            ["--modality", "sensor", "--classes", "ok,bad"],
            "expected [batch, 2] for 2 classes",
        ),
        (classifier(SENSOR, external=True), ["--modality", "sensor"], "external data; refused"),
        (classifier(SENSOR, softmax=False), ["--modality", "sensor"], "canary: outputs are not"),
        (classifier(SENSOR, broken_reshape=True), ["--modality", "sensor"], "canary batch does"),
        (classifier(SENSOR), ["--modality", "sensor", "--classes", "a,,b"], "none empty"),
        (classifier(SENSOR), ["--modality", "sensor", "--classes", "a,a"], "named twice"),
        (classifier(SENSOR), ["--modality", "sensor", "--name", "x/v2"], "no '/'"),
        (classifier(SENSOR), [], "give --modality"),
    ],
)
def test_a_file_no_consumer_would_serve_is_refused_in_one_line_and_nothing_is_written(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    data: bytes,
    flags: list[str],
    why: str,
) -> None:
    code, err = publish(tmp_path, data, *flags, capsys=capsys)
    assert code == 1
    assert err.count("\n") == 1, err
    assert err.startswith("driftline models publish: refused, nothing published: ")
    assert why in err
    assert "Traceback" not in err


def test_a_missing_file_and_a_bad_signing_key_are_refused_before_any_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "artifacts"
    code = main(["models", "publish", str(tmp_path / "nope.onnx"), "--modality", "sensor"])
    assert code == 1
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "key.pem").write_text(
        "-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n"
    )
    for key, why in ((tmp_path / "key.pem", "not an ed25519"), (tmp_path / "gone.pem", "no such")):
        code, err = publish(
            tmp_path,
            classifier(SENSOR),
            "--modality",
            "sensor",
            "--sign-key",
            str(key),
            capsys=capsys,
        )
        assert code == 1
        assert why in err
        assert err.count("\n") == 1, err
    assert not root.exists()


def test_a_servable_file_gives_the_io_signature_of_its_graph() -> None:
    inputs, outputs = check_servable(classifier(SENSOR), "sensor", N)
    assert [(s.name, s.dtype, s.shape) for s in inputs] == [("x", "float32", [-1, 4, 64])]
    assert [(s.name, s.dtype, s.shape) for s in outputs] == [("p", "float32", [-1, N])]
    inputs, _ = check_servable(classifier(["batch", 3, 48, 40]), "image", N)
    assert inputs[0].shape == [-1, 3, 48, 40]


def _image_version(tmp_path: Path, data: bytes, declared: list[int]) -> ModelVersion:
    uri = FsspecArtifactStore(tmp_path.as_uri()).put("m/model.onnx", data)
    inputs, outputs = check_servable(data, "image", N)
    return ModelVersion(
        name="insulator-image",
        version=1,
        modality="image",
        artifact_uri=uri,
        sha256=sha256_hex(data),
        inputs=[type(inputs[0])(name="x", dtype="float32", shape=declared)],
        outputs=outputs,
        classes=list(INSULATOR_CLASSES),
        lineage=Lineage(source="test"),
        status="champion",
        created_time_ms=1,
    )


def test_an_image_model_is_fed_photos_resized_to_its_own_input_size(tmp_path: Path) -> None:
    data = classifier(["batch", 3, 48, 40])
    model = load(_image_version(tmp_path, data, [-1, 3, 48, 40]), FsspecArtifactStore("file:///"))
    _, decoder = decoder_for(InferenceSettings(kafka=KafkaSettings(), modality="image"))
    values = [record(encode(photo(120 + i, 90), "PNG")) for i in range(3)]
    shape = tuple(model.version.inputs[0].shape[1:])
    batch = decoder(values, [None] * len(values), shape)
    assert batch.failures == []
    assert batch.inputs.shape == (3, 3, 48, 40)
    assert model.predict(batch.inputs).shape == (3, N)


def test_a_record_that_misstates_the_graphs_input_size_is_refused(tmp_path: Path) -> None:
    mv = _image_version(tmp_path, classifier(["batch", 3, 48, 40]), [-1, 3, 64, 64])
    with pytest.raises(ModelRejected) as exc:
        load(mv, FsspecArtifactStore("file:///"))
    assert exc.value.reason == REJECT_CONTRACT
    assert "[batch, 3, 64, 64]" in str(exc.value)
