"""A batch the model cannot score as a whole is split until only the events that fail remain."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from driftline.schemas import deadletter as dl
from driftline.schemas.batch import DecodedBatch
from driftline.services.core.scoring import score_apart


def _batch(values: list[float]) -> DecodedBatch:
    n = len(values)
    return DecodedBatch(
        positions=[10 + i for i in range(n)],
        event_ids=[f"e{i}" for i in range(n)],
        asset_ids=[f"a{i}" for i in range(n)],
        event_time_ms=np.arange(n, dtype=np.int64) * 1000,
        inputs=np.asarray(values, dtype=np.float32).reshape(n, 1),
    )


class Model:
    """Fails on any batch that holds a negative input, as a runtime fails on a bad tensor."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        self.calls += 1
        if (x < 0).any():
            raise RuntimeError("input out of range")
        return np.concatenate([x, 1 - x], axis=1)


@pytest.mark.parametrize("bad", [[], [0], [5], [2, 3], [0, 7, 13], list(range(16))])
def test_only_the_events_that_fail_alone_are_dead_lettered(bad: list[int]) -> None:
    values = [0.5 if i not in bad else -1.0 for i in range(16)]
    model = Model()
    batch, probs, failures = score_apart(model, _batch(values))
    assert [pos for pos, _ in failures] == [10 + i for i in bad]
    assert all(e.error_class == dl.SCORING_FAILED for _, e in failures)
    assert all("out of range" in str(e) for _, e in failures)
    good = [i for i in range(16) if i not in bad]
    # The scored rest keeps its order and its own ids, times and scores.
    assert batch.positions == [10 + i for i in good]
    assert batch.event_ids == [f"e{i}" for i in good]
    assert batch.event_time_ms.tolist() == [i * 1000 for i in good]
    assert probs.shape == (len(good), 2) or not good
    if good:
        assert np.allclose(probs[:, 0], 0.5)
    assert model.calls <= 2 * 16


def test_one_poisoned_event_costs_a_few_calls_not_one_per_event() -> None:
    values = [0.5] * 512
    values[300] = -1.0
    model = Model()
    batch, _, failures = score_apart(model, _batch(values))
    assert [pos for pos, _ in failures] == [310]
    assert len(batch) == 511
    assert model.calls <= 2 * 10 + 2
