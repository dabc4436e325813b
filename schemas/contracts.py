"""Data contracts shared by producers, models and consumers: sensor layout, classes, model names."""

from __future__ import annotations

from driftline.schemas.messages import MODALITY_IMAGE, MODALITY_SENSOR

# Insulator condition classes, in the order every model's probabilities use.
INSULATOR_CLASSES: tuple[str, ...] = ("healthy", "contaminated", "cracked", "flashover_damaged")
FAULTY_CLASSES: tuple[str, ...] = INSULATOR_CLASSES[1:]

# One SensorWindow: 4 channels x 64 samples, float32.
SENSOR_CHANNELS: tuple[str, ...] = (
    "leakage_current_ma",
    "partial_discharge_pc",
    "temperature_c",
    "relative_humidity_pct",
)
SENSOR_SAMPLES = 64
SENSOR_SAMPLE_RATE_HZ = 1.0

SENSOR_INPUT_NAME = "samples"

# One CameraImage as the image model sees it: float32 [batch, 3, IMAGE_SIZE, IMAGE_SIZE],
# RGB, NCHW, scaled to 0..1 (uint8 / 255). Decoders resize photos to IMAGE_SIZE x IMAGE_SIZE.
IMAGE_SIZE = 64
IMAGE_CHANNELS = 3
IMAGE_INPUT_NAME = "image"
PROBABILITIES_OUTPUT_NAME = "probabilities"

MODEL_NAMES: dict[str, str] = {
    MODALITY_SENSOR: "insulator-sensor",
    MODALITY_IMAGE: "insulator-image",
}
