"""Accounting of a run: which events were sent, which results came back, and how right they were.

Counting event ids is what proves "nothing lost, nothing duplicated"; comparing predictions
with the simulator's ground truth, per model version and time bucket, is what shows a model
ageing under drift and recovering after a retrain.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field


@dataclass(frozen=True)
class AccuracyPoint:
    t_s: float  # bucket start, seconds since the run started
    modality: str
    version: int
    accuracy: float
    count: int
    confidence: float | None = None  # mean confidence served: the estimate beside accuracy


@dataclass
class Ledger:
    """Sent events (with their truth) and the results seen for them."""

    sent: dict[str, tuple[str, str, float]] = field(default_factory=dict)  # id -> truth
    seen: dict[str, int] = field(default_factory=dict)
    _scored: list[tuple[float, str, int, bool, float | None]] = field(default_factory=list)

    def record_sent(self, event_id: str, modality: str, true_class: str, t_s: float) -> None:
        self.sent[event_id] = (modality, true_class, t_s)

    def record_result(
        self, event_id: str, version: int, predicted: str, confidence: float | None = None
    ) -> None:
        self.seen[event_id] = self.seen.get(event_id, 0) + 1
        truth = self.sent.get(event_id)
        if truth is not None and self.seen[event_id] == 1:
            modality, true_class, t_s = truth
            self._scored.append((t_s, modality, version, predicted == true_class, confidence))

    @property
    def lost(self) -> int:
        return sum(1 for event_id in self.sent if event_id not in self.seen)

    @property
    def duplicated(self) -> int:
        return sum(count - 1 for count in self.seen.values() if count > 1)

    @property
    def unknown(self) -> int:
        """Results for events this run did not send (a previous run's, for example)."""
        return sum(1 for event_id in self.seen if event_id not in self.sent)

    def accuracy(
        self, modality: str, since_s: float = 0.0, until_s: float = float("inf")
    ) -> tuple[float, int]:
        """Accuracy of first results for events sent in [since_s, until_s), any version."""
        hits = [ok for t, m, _, ok, _ in self._scored if m == modality and since_s <= t < until_s]
        return (sum(hits) / len(hits) if hits else float("nan")), len(hits)

    def series(self, bucket_s: float) -> list[AccuracyPoint]:
        """Accuracy per (time bucket of the event's send time, modality, model version), with
        the mean confidence served beside it (None when results carried none)."""
        buckets: dict[tuple[float, str, int], list[tuple[bool, float | None]]] = defaultdict(list)
        for t, modality, version, ok, confidence in self._scored:
            buckets[(bucket_s * int(t // bucket_s), modality, version)].append((ok, confidence))
        out = []
        for (t, m, v), rows in sorted(buckets.items()):
            confs = [c for _, c in rows if c is not None]
            mean = sum(confs) / len(confs) if confs else None
            out.append(
                AccuracyPoint(t, m, v, sum(ok for ok, _ in rows) / len(rows), len(rows), mean)
            )
        return out
