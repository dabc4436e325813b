"""The features pipeline's join path: forward inputs and labels, join them, emit windows.

Inputs and labels are forwarded to the join topic keyed by asset id (results are forwarded by
the statistics path). In a worker the router (router.py, on the shared batch loop) does the
forwarding, with the same `route`; these forwarders serve the pipeline in memory. The join
topic's records are joined (services.features.join), and the
inputs of every label it settles are read back from Kafka in one batch to build the labelled
windows sent to training.windows.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence

from driftline.schemas import codec
from driftline.schemas import deadletter as dl
from driftline.schemas import headers as h
from driftline.schemas.messages import Label, LabelledWindow
from driftline.schemas.topics import FEEDBACK_LABELS
from driftline.services.core.join import Decision, labelled_window
from driftline.services.features import joinrecords as jr
from driftline.services.features.join import JoinProcessor
from driftline.services.features.metrics import FeaturesMetrics
from driftline.services.features.readback import FetchedRecord, InputReader
from driftline.services.features.records import Outbox, RawRecord
from driftline.services.features.router import Note, route
from driftline.services.features.settings import FeaturesSettings

log = logging.getLogger(__name__)

# Sends one consumed record to a dead-letter topic (the pipeline's, shared with statistics).
DeadLetterSink = Callable[[RawRecord, dl.CodecError, str], Awaitable[None]]


class JoinStage:
    """Forwarders to the join topic, and the join's batch handler and settling."""

    def __init__(
        self,
        settings: FeaturesSettings,
        metrics: FeaturesMetrics,
        outbox: Outbox,
        dead_letter: DeadLetterSink,
        *,
        join: JoinProcessor | None,
        reader: InputReader | None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.outbox = outbox
        self.topics = settings.kafka.topics
        self.join_topic = f"{settings.faust_app_id}-join"
        self.join = join
        self.reader = reader
        self._dead_letter = dead_letter

    # ---- forwarders ----------------------------------------------------------------------

    async def on_inputs(self, records: Sequence[RawRecord]) -> None:
        """Forward where each input lies (not the input) to the join, keyed by asset id."""
        for rec in records:
            out = route(rec, self.topics)
            if isinstance(out, Note):
                await self.outbox.send(
                    self.join_topic, out.asset_id.encode(), out.value, out.headers
                )
            else:  # the inference consumer dead-letters bad inputs; the join just skips them
                self.metrics.events.labels("input_skipped").inc()
        if records:
            self.metrics.consumed.labels(records[0].topic).inc(len(records))

    async def on_labels(self, records: Sequence[RawRecord]) -> None:
        """Forward labels to the join by asset id, with their source position; dead-letter
        those that cannot be routed or are not well formed (router.route says which)."""
        for rec in records:
            out = route(rec, self.topics)
            if isinstance(out, Note):
                await self.outbox.send(
                    self.join_topic, out.asset_id.encode(), out.value, out.headers
                )
            else:
                await self._dead_letter(rec, out.error, self.topics.dlq(FEEDBACK_LABELS))
        if records:
            self.metrics.consumed.labels(records[0].topic).inc(len(records))

    async def forward(self, asset_id: str, payload: bytes, kind: str) -> None:
        await self.outbox.send(
            self.join_topic, asset_id.encode(), payload, [(jr.JOIN_KIND, kind.encode())]
        )

    # ---- the join itself -----------------------------------------------------------------

    async def on_join(self, records: Sequence[RawRecord]) -> None:
        """Join a batch; the inputs of every label it settles are read back in one go."""
        join = self.join
        assert join is not None
        outcomes: list[jr.LabelOutcome] = []
        for rec in records:
            kind = rec.header(jr.JOIN_KIND)
            if rec.value is None:
                continue
            if kind == jr.KIND_INPUT.encode():
                outcomes += join.on_input(rec.value)
            elif kind == jr.KIND_RESULT.encode():
                outcomes += join.on_result(rec.value)
            elif kind == jr.KIND_LABEL.encode():
                record = jr.LabelRecord(
                    key=rec.key,
                    label=codec.decode(Label, rec.value, rec.content_type),  # checked upstream
                    value=rec.value,
                    headers=[(k, v) for k, v in rec.headers if not k.startswith("driftline-join-")],
                    source=jr.parse_source(rec.header(jr.JOIN_SOURCE)),
                )
                outcomes.append(join.on_label(record))
        await self.settle(outcomes)
        if records:
            self.metrics.consumed.labels(records[0].topic).inc(len(records))

    async def settle(self, outcomes: Sequence[jr.LabelOutcome], *, now: bool = False) -> None:
        """Act on labels' outcomes: emit their windows, dead-letter them, or count them.

        The inputs of every window are read back from Kafka in one batch. A window is sent and
        acknowledged before its event is marked labelled (see JoinProcessor.confirm), and a
        waiting label stops waiting only after that (a crash in between leaves it waiting, to
        be decided again at the recovery: JoinProcessor.retry_waiting). `now`:
        settled by a timer (no consumed record to attach a dead letter to), so dead letters
        are sent at once and awaited.
        """
        join = self.join
        assert join is not None
        emits = [e for o in outcomes if o.decision is Decision.EMIT for e in o.emits]
        fetched = {}
        if emits:
            assert self.reader is not None, "the join needs an InputReader"
            refs = [e.state.ref.position for e in emits if e.state.ref is not None]
            fetched = await self.reader.read(refs)
        for outcome in outcomes:
            await self._act(outcome, fetched, now)
            join.settled(outcome)  # only now does a waiting label stop waiting

    async def _act(
        self,
        outcome: jr.LabelOutcome,
        fetched: Mapping[tuple[str, int, int], FetchedRecord],
        now: bool,
    ) -> None:
        """Emit an outcome's windows (then mark their events), or dead-letter its label."""
        join = self.join
        assert join is not None
        self.metrics.labels.labels(outcome.decision.value).inc()
        if outcome.decision is Decision.EMIT:
            ready: list[tuple[jr.Emit, LabelledWindow]] = []
            lost: list[str] = []
            for emit in outcome.emits:
                window = self._window(emit, fetched, outcome.record.label)
                if window is None:
                    join.release(emit)
                    lost.append(emit.state.event_id)
                else:
                    ready.append((emit, window))
            await asyncio.gather(*(self._emit_window(w) for _, w in ready))
            for emit, window in ready:
                join.confirm(emit, window, outcome.record.label)
            if lost:
                message = (
                    f"missing_input: the input of event(s) {', '.join(lost[:5])}"
                    f"{' ...' if len(lost) > 5 else ''} is no longer readable from Kafka"
                )
                await self._dead_letter_label(outcome, now, message)
        elif outcome.decision in (Decision.UNKNOWN, Decision.EXPIRED):
            await self._dead_letter_label(outcome, now)

    def _window(
        self, emit: jr.Emit, fetched: Mapping[tuple[str, int, int], FetchedRecord], label: Label
    ) -> LabelledWindow | None:
        """The labelled window of an event, from its input as read back (None if it is gone)."""
        ref = emit.state.ref
        got = fetched.get(ref.position) if ref is not None else None
        if ref is None or got is None:
            return None
        try:
            stored = jr.stored_input(ref.input_type, got.value, got.content_type)
        except dl.CodecError:
            return None
        if stored.event_id != emit.state.event_id:
            return None  # not the record we noted (a topic recreated since): never mislabel
        return labelled_window(emit.state, stored.data, label)

    async def _dead_letter_label(
        self, outcome: jr.LabelOutcome, now: bool, message: str | None = None
    ) -> None:
        letter, hdrs = jr.dead_letter_for(outcome, self.settings.service_name, message)
        record = outcome.record
        topic = self.topics.dlq(FEEDBACK_LABELS)
        await self.outbox.send(topic, record.key, record.value, hdrs, wait=now)
        self.metrics.dead_letters.labels(letter.source_topic, letter.error_class).inc()
        log.info("label dead-lettered: %s", letter.error_message)

    async def _emit_window(self, window: LabelledWindow) -> None:
        topic = self.topics.training_windows
        value = codec.encode(window)
        await self.outbox.send(topic, window.asset_id.encode(), value, h.AVRO, wait=True)
        self.metrics.produced.labels(topic).inc()
