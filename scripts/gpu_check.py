#!/usr/bin/env python3
"""GPU check for the trainer, under five minutes: train on CUDA, export, score with ONNX
Runtime's CUDA provider, and compare with the CPU.

    .venv/bin/python scripts/gpu_check.py [--out gpu_check.json]

Steps: simulate 10,000 sensor windows and 2,000 photos; train both models on CUDA (and the
sensor model on the CPU too, for the speed-up); export each to ONNX (checker + parity, as the
trainer does); score the holdout with ONNX Runtime on CUDAExecutionProvider and on
CPUExecutionProvider and compare probabilities and predicted classes; time scoring on both.
ONNX Runtime's CUDA provider needs the `gpu` extra (onnxruntime-gpu); without it the ONNX
Runtime comparison is reported as skipped and the torch part still runs.

Exit codes: 0 all checks passed, 1 a check failed, 2 no CUDA device (nothing was run, unless
--allow-cpu, which runs the same steps on the CPU to test this script itself).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# ONNX Runtime CUDA vs CPU may differ by kernel choice (TF32, fused ops), not by much.
PROBABILITY_TOLERANCE = 1e-3
MIN_AGREEMENT = 0.999


def _providers_session(onnx_bytes: bytes, provider: str) -> Any:
    import onnxruntime as ort

    chain = [provider] if provider == "CPUExecutionProvider" else [provider, "CPUExecutionProvider"]
    return ort.InferenceSession(onnx_bytes, providers=chain)


def _score(session: Any, x: Any, batch: int = 1024) -> tuple[Any, float]:
    import numpy as np

    name = session.get_inputs()[0].name
    session.run(None, {name: x[:batch]})  # warm-up (CUDA graph capture, allocations)
    started = time.monotonic()
    out = [session.run(None, {name: x[i : i + batch]})[0] for i in range(0, len(x), batch)]
    return np.concatenate(out), time.monotonic() - started


def check_modality(
    modality: str, n: int, epochs: int, device: str, cpu_too: bool
) -> dict[str, Any]:
    import numpy as np
    import onnxruntime as ort
    import torch

    from driftline.schemas.contracts import IMAGE_INPUT_NAME, SENSOR_INPUT_NAME
    from driftline.services.core.gate import time_ordered_split
    from driftline.services.core.metrics import macro_f1
    from driftline.services.simulator.fleet import labelled_dataset
    from driftline.services.simulator.images import labelled_images
    from driftline.trainer.export import export_classifier
    from driftline.trainer.fit import FitConfig, fit
    from driftline.trainer.inputs import model_input
    from driftline.trainer.models import WithProbabilities
    from driftline.trainer.retrain import new_model

    t0 = time.monotonic()
    if modality == "image":
        photos, y = labelled_images(n, seed=7)
        x = model_input("image", photos.transpose(0, 3, 1, 2))
        lr, input_name = 1e-2, IMAGE_INPUT_NAME
    else:
        x, y = labelled_dataset(n, seed=7)
        lr, input_name = 3e-3, SENSOR_INPUT_NAME
    train, hold = time_ordered_split(np.arange(n, dtype=np.int64), 0.2, 50)
    result: dict[str, Any] = {"modality": modality, "examples": n, "data_s": time.monotonic() - t0}

    def train_on(dev: str) -> tuple[Any, float]:
        torch.manual_seed(7)
        model = new_model(modality)
        model.fit_normalisation(torch.from_numpy(x[train]))
        config = FitConfig(epochs=epochs, learning_rate=lr, seed=7, device=dev)
        report = fit(model, x[train], y[train], x[hold], y[hold], 4, config)
        return model, report.seconds

    model, result[f"train_{device}_s"] = train_on(device)
    if cpu_too and device != "cpu":
        _, result["train_cpu_s"] = train_on("cpu")
        result["train_speedup"] = result["train_cpu_s"] / result[f"train_{device}_s"]

    t0 = time.monotonic()
    exported = export_classifier(model, x[hold][:64], input_name)
    result["export_check_s"] = time.monotonic() - t0
    result["parity_torch_vs_ort_cpu"] = exported.parity_max_abs_diff

    cpu_probs, result["ort_cpu_score_s"] = _score(
        _providers_session(exported.onnx_bytes, "CPUExecutionProvider"), x[hold]
    )
    result["holdout_macro_f1"] = macro_f1(y[hold], cpu_probs.argmax(axis=1), 4)
    if device == "cuda":
        served = WithProbabilities(model).eval().to("cuda")
        with torch.no_grad():
            torch_probs = torch.cat(
                [
                    served(torch.from_numpy(x[hold][i : i + 1024]).cuda()).cpu()
                    for i in range(0, len(hold), 1024)
                ]
            ).numpy()
        result["torch_cuda_vs_ort_cpu_max_abs_diff"] = float(np.abs(torch_probs - cpu_probs).max())
        model.to("cpu")
    if "CUDAExecutionProvider" in ort.get_available_providers():
        session = _providers_session(exported.onnx_bytes, "CUDAExecutionProvider")
        result["ort_cuda_provider_active"] = session.get_providers()[0] == "CUDAExecutionProvider"
        cuda_probs, result["ort_cuda_score_s"] = _score(session, x[hold])
        result["ort_cuda_vs_cpu_max_abs_diff"] = float(np.abs(cuda_probs - cpu_probs).max())
        result["ort_cuda_vs_cpu_agreement"] = float(
            (cuda_probs.argmax(axis=1) == cpu_probs.argmax(axis=1)).mean()
        )
    else:
        result["ort_cuda"] = (
            "skipped: onnxruntime has no CUDAExecutionProvider (install the gpu extra)"
        )
    return result


def failures(results: list[dict[str, Any]], device: str) -> list[str]:
    bad = []
    for r in results:
        name = r["modality"]
        if r["parity_torch_vs_ort_cpu"] > 1e-4:
            bad.append(f"{name}: export parity {r['parity_torch_vs_ort_cpu']:.2e} > 1e-4")
        if device == "cuda" and r["torch_cuda_vs_ort_cpu_max_abs_diff"] > PROBABILITY_TOLERANCE:
            bad.append(
                f"{name}: torch CUDA vs ORT CPU differ by "
                f"{r['torch_cuda_vs_ort_cpu_max_abs_diff']:.2e}"
            )
        if "ort_cuda_vs_cpu_max_abs_diff" in r:
            if not r["ort_cuda_provider_active"]:
                bad.append(f"{name}: ONNX Runtime fell back from the CUDA provider")
            if r["ort_cuda_vs_cpu_max_abs_diff"] > PROBABILITY_TOLERANCE:
                bad.append(
                    f"{name}: ORT CUDA vs CPU differ by {r['ort_cuda_vs_cpu_max_abs_diff']:.2e}"
                )
            if r["ort_cuda_vs_cpu_agreement"] < MIN_AGREEMENT:
                bad.append(
                    f"{name}: ORT CUDA and CPU agree on {r['ort_cuda_vs_cpu_agreement']:.4f}"
                )
        if r["holdout_macro_f1"] < 0.5:
            bad.append(
                f"{name}: holdout macro-F1 {r['holdout_macro_f1']:.3f} < 0.5; training broke"
            )
    return bad


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sensor-windows", type=int, default=10_000)
    parser.add_argument("--images", type=int, default=2_000)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument(
        "--skip-cpu-train", action="store_true", help="no CPU training for the speed-up"
    )
    parser.add_argument("--allow-cpu", action="store_true", help="without a GPU, run on the CPU")
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args()

    import onnxruntime as ort
    import torch

    started = time.monotonic()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not args.allow_cpu:
        print("gpu_check: torch sees no CUDA device; nothing checked (use --allow-cpu to dry-run)")
        return 2
    summary: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "ort_providers": ort.get_available_providers(),
        "results": [],
    }
    print(
        f"gpu_check on {summary['device']} "
        f"(torch {torch.__version__}, onnxruntime {ort.__version__})"
    )
    for modality, n in (("sensor", args.sensor_windows), ("image", args.images)):
        r = check_modality(
            modality,
            n,
            args.epochs,
            device,
            cpu_too=not args.skip_cpu_train and modality == "sensor",
        )
        summary["results"].append(r)
        print(json.dumps(r, indent=2, default=str), flush=True)
    summary["seconds"] = time.monotonic() - started
    summary["failures"] = failures(summary["results"], device)
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=2, default=str) + "\n")
    for line in summary["failures"]:
        print(f"FAIL {line}")
    print(
        f"gpu_check: {'FAILED' if summary['failures'] else 'passed'} in {summary['seconds']:.0f}s"
    )
    return 1 if summary["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
