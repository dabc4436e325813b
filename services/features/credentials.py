"""The features app's Kafka security, from the same settings every other service reads.

Every other service hands `KafkaSettings.client_config()` to librdkafka. faust talks to Kafka
through aiokafka, which takes an ssl.SSLContext and faust credentials instead: this module
builds those from the librdkafka options (`security.protocol`, `sasl.mechanism`,
`ssl.ca.location`, `ssl.certificate.location`, `ssl.key.location`, `ssl.key.password`,
`enable.ssl.certificate.verification`, `ssl.endpoint.identification.algorithm`) and the
SASL username and password, so one configuration secures every service alike.
"""

from __future__ import annotations

import ssl
from typing import Any

from faust.auth import SASLCredentials, SSLCredentials
from faust.types.auth import CredentialsT

from driftline.services.runtime.settings import KafkaSettings

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


class UnsupportedSecurity(ValueError):
    """A Kafka security option the features app cannot honour; says which and why."""


def ssl_context(conf: dict[str, Any]) -> ssl.SSLContext:
    """An SSLContext for the librdkafka ssl.* options in conf."""
    ctx = ssl.create_default_context(cafile=conf.get("ssl.ca.location") or None)
    if str(conf.get("enable.ssl.certificate.verification", "true")).lower() == "false":
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif str(conf.get("ssl.endpoint.identification.algorithm", "https")).lower() == "none":
        ctx.check_hostname = False
    cert = conf.get("ssl.certificate.location")
    if cert:
        ctx.load_cert_chain(
            cert,
            keyfile=conf.get("ssl.key.location") or None,
            password=conf.get("ssl.key.password"),
        )
    return ctx


def faust_credentials(kafka: KafkaSettings) -> CredentialsT | None:
    """faust broker credentials for these settings; None for a plaintext cluster."""
    conf = kafka.client_config()
    protocol = str(conf.get("security.protocol", "PLAINTEXT")).upper()
    if protocol not in PROTOCOLS:
        raise UnsupportedSecurity(
            f"security.protocol {protocol!r} is not one of {', '.join(PROTOCOLS)}"
        )
    if protocol == "PLAINTEXT":
        return None
    context = ssl_context(conf) if protocol.endswith("SSL") else None
    if protocol == "SSL":
        assert context is not None
        return SSLCredentials(context)
    mechanism = str(conf.get("sasl.mechanism", conf.get("sasl.mechanisms", "PLAIN"))).upper()
    if mechanism not in MECHANISMS:
        raise UnsupportedSecurity(
            f"the features app (faust over aiokafka) supports sasl.mechanism "
            f"{', '.join(MECHANISMS)}, not {mechanism!r}"
        )
    username, password = conf.get("sasl.username"), conf.get("sasl.password")
    if not username or password is None:
        raise UnsupportedSecurity(
            f"security.protocol {protocol} needs a SASL username and password "
            "(DRIFTLINE_KAFKA__SASL_USERNAME, DRIFTLINE_KAFKA__SASL_PASSWORD)"
        )
    return SASLCredentials(
        username=username, password=password, ssl_context=context, mechanism=mechanism
    )
