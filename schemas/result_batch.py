"""Avro InferenceResult records for a whole scored batch, without a dict or a writer per event.

Every field a batch's results share (schema version, modality, model name and version, class
names, the time they were scored) is encoded once per batch; numbers that differ per event
(probabilities, confidence, event time) are encoded for the whole batch with numpy; what is
left per event is joining a dozen byte strings. The bytes are exactly what fastavro writes for
the same record (tests/unit/test_result_batch.py holds the two side by side), so readers see no
difference.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from driftline.schemas.avrobytes import encode_long, encode_longs, encode_string, length_prefix


class ResultEncoder:
    """Encodes the results of one model version (one modality, one list of classes)."""

    def __init__(
        self, *, modality: str, model_name: str, model_version: int, classes: Sequence[str]
    ) -> None:
        self.classes = list(classes)
        self.width = 4 * len(self.classes)
        block = encode_long(len(self.classes)) + b"".join(encode_string(c) for c in self.classes)
        array = (block + b"\x00") if self.classes else b"\x00"
        # modality, model_name, model_version, classes, then the probabilities' length prefix
        self._middle = (
            encode_string(modality)
            + encode_string(model_name)
            + encode_long(model_version)
            + array
            + encode_long(self.width)
        )
        self._predicted = [encode_string(c) for c in self.classes]

    def encode(
        self,
        event_ids: Sequence[str],
        asset_ids: Sequence[str],
        event_time_ms: npt.NDArray[np.int64],
        probabilities: npt.NDArray[np.float32],
        predicted: npt.NDArray[np.int64],
        confidence: npt.NDArray[np.float32],
        scored_time_ms: int,
    ) -> list[bytes]:
        """One Avro InferenceResult per row, in order."""
        n = len(event_ids)
        if probabilities.shape != (n, len(self.classes)):
            raise ValueError(
                f"probabilities of shape {probabilities.shape} for {n} events and "
                f"{len(self.classes)} classes"
            )
        rows = np.ascontiguousarray(probabilities, dtype="<f4").tobytes()
        conf = np.ascontiguousarray(confidence, dtype="<f4").tobytes()
        times = encode_longs(event_time_ms)
        tail = encode_long(scored_time_ms)
        middle, names, width = self._middle, self._predicted, self.width
        index = predicted.tolist()
        out: list[bytes] = []
        append = out.append
        for i in range(n):
            e = event_ids[i].encode("utf-8")
            a = asset_ids[i].encode("utf-8")
            append(
                b"".join(
                    (
                        b"\x02",  # schema_version 1
                        length_prefix(len(e)),
                        e,
                        length_prefix(len(a)),
                        a,
                        middle,
                        rows[i * width : (i + 1) * width],
                        names[index[i]],
                        conf[4 * i : 4 * i + 4],
                        times[i],
                        tail,
                    )
                )
            )
        return out
