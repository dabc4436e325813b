"""A decoded batch: model inputs as one array, event metadata, and failures by input position."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from driftline.schemas.deadletter import CodecError


@dataclass(frozen=True)
class DecodedBatch:
    """The decodable part of a batch of Kafka values, ready for the model.

    `positions[i]` is the index in the consumed batch of the event whose input is `inputs[i]`;
    `failures` holds (position, reason) for every value that could not become an input.
    """

    positions: list[int]
    event_ids: list[str]
    asset_ids: list[str]
    event_time_ms: npt.NDArray[np.int64]
    inputs: npt.NDArray[np.float32]
    failures: list[tuple[int, CodecError]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.positions)

    def take(self, rows: npt.NDArray[np.intp]) -> DecodedBatch:
        """The rows `rows` of this batch (inputs, ids, times), without its failures."""
        picked = rows.tolist()
        return DecodedBatch(
            positions=[self.positions[i] for i in picked],
            event_ids=[self.event_ids[i] for i in picked],
            asset_ids=[self.asset_ids[i] for i in picked],
            event_time_ms=self.event_time_ms[rows],
            inputs=self.inputs[rows],
        )
