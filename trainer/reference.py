"""The reference profile a version carries: what its training inputs and holdout confidences
looked like, binned, so the features app can measure live drift against it (PSI)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from driftline.schemas.contracts import SENSOR_CHANNELS
from driftline.schemas.messages import MODALITY_SENSOR, FeatureHistogram, ReferenceProfile
from driftline.services.core.profile import CONFIDENCE_FEATURE, Histogram, profile, sensor_summaries


def _feature(hist: Histogram) -> FeatureHistogram:
    return FeatureHistogram(
        name=hist.name, edges=hist.edges.tolist(), fractions=hist.fractions.tolist()
    )


def reference_profile(
    modality: str,
    train_inputs: npt.NDArray[np.float32],
    holdout_probabilities: npt.NDArray[np.float32],
) -> ReferenceProfile:
    """Confidence on the holdout, plus each sensor summary (mean/std/max per channel)."""
    confidence = holdout_probabilities.max(axis=1) if holdout_probabilities.size else np.zeros(0)
    features = [_feature(profile(CONFIDENCE_FEATURE, confidence))]
    if modality == MODALITY_SENSOR:
        for name, values in sensor_summaries(train_inputs, SENSOR_CHANNELS).items():
            features.append(_feature(profile(name, values)))
    return ReferenceProfile(count=len(train_inputs), features=features)
