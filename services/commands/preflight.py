"""First contact: a command that needs the broker asks it for metadata first, briefly.

The services wait patiently for a broker (a registry read allows 30 s, a consumer retries
for ever); a command run by hand should instead say within seconds that nobody answers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from driftline.services.runtime.settings import KafkaSettings

FIRST_CONTACT_TIMEOUT_S = 8.0


def check_kafka(kafka: KafkaSettings, timeout_s: float = FIRST_CONTACT_TIMEOUT_S) -> None:
    """Raise KafkaException (the CLI prints the "is Kafka running?" hint) if no broker answers."""
    from driftline.services.runtime.kafka import admin

    admin(kafka).list_topics(timeout=timeout_s)
