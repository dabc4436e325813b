"""The features app (faust over aiokafka) is secured by the same settings as librdkafka clients."""

from __future__ import annotations

import ssl

import pytest
from faust.auth import SASLCredentials, SSLCredentials
from faust.types.auth import AuthProtocol, SASLMechanism
from pydantic import SecretStr

from driftline.services.features.credentials import UnsupportedSecurity, faust_credentials
from driftline.services.runtime.settings import KafkaSettings


def test_plaintext_needs_no_credentials() -> None:
    assert faust_credentials(KafkaSettings()) is None


@pytest.mark.parametrize("protocol", ["SASL_PLAINTEXT", "SASL_SSL"])
@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_settings_become_faust_sasl_credentials(protocol: str, mechanism: str) -> None:
    kafka = KafkaSettings(
        client={"security.protocol": protocol.lower(), "sasl.mechanism": mechanism},
        sasl_username="driftline-features",
        sasl_password=SecretStr("s3cret"),
    )
    creds = faust_credentials(kafka)
    assert isinstance(creds, SASLCredentials)
    assert creds.username == "driftline-features"
    assert creds.password == "s3cret"
    assert creds.mechanism == SASLMechanism(mechanism)
    assert creds.protocol == AuthProtocol(protocol)
    assert (creds.ssl_context is not None) == (protocol == "SASL_SSL")


def test_tls_options_shape_the_ssl_context() -> None:
    kafka = KafkaSettings(
        client={"security.protocol": "SSL", "ssl.endpoint.identification.algorithm": "none"}
    )
    creds = faust_credentials(kafka)
    assert isinstance(creds, SSLCredentials)
    assert isinstance(creds.context, ssl.SSLContext)
    assert creds.context.check_hostname is False
    assert creds.context.verify_mode == ssl.CERT_REQUIRED
    off = KafkaSettings(
        client={"security.protocol": "SSL", "enable.ssl.certificate.verification": "false"}
    )
    creds = faust_credentials(off)
    assert isinstance(creds, SSLCredentials)
    assert creds.context.verify_mode == ssl.CERT_NONE


@pytest.mark.parametrize(
    ("client", "user", "needle"),
    [
        ({"security.protocol": "SASL_SSL", "sasl.mechanism": "GSSAPI"}, "u", "GSSAPI"),
        ({"security.protocol": "SASL_PLAINTEXT"}, None, "username and password"),
        ({"security.protocol": "TLS"}, None, "security.protocol"),
    ],
)
def test_what_the_app_cannot_honour_is_refused_by_name(
    client: dict[str, str], user: str | None, needle: str
) -> None:
    kafka = KafkaSettings(
        client=client, sasl_username=user, sasl_password=SecretStr("p") if user else None
    )
    with pytest.raises(UnsupportedSecurity, match=needle):
        faust_credentials(kafka)
