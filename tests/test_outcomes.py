"""custom_ca_conformance.model.outcomes on real Envoy error strings, verbatim from upstream."""

import pytest

from custom_ca_conformance.model.outcomes import ISTIO_ACCESS_LOG_LINE, Classification, Outcome, classify_envoy, describe

# --- Envoy strings, verbatim from upstream-facts §5.1 ----------------------------------------------

CONNECT_ERROR = "upstream connect error or disconnect/reset before headers. "
CLASSIC_VERIFY_BODY = (
    CONNECT_ERROR + "reset reason: connection failure, transport failure reason: "
    "TLS error: 268435581:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED"
)
RETRIED_VERIFY_BODY = (
    CONNECT_ERROR + "retried and the latest reset reason: connection failure, transport failure reason: "
    "TLS error: 268435581:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED"
)
DELIMITED_VERIFY = "TLS_error:|268435581:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED:TLS_error_end"
DOUBLED_END_VERIFY = DELIMITED_VERIFY + ":TLS_error_end"
X509_DETAIL_VERIFY = (
    "TLS_error:|268435581:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED:certificate has expired:TLS_error_end"
)
HIDDEN_BODY = CONNECT_ERROR + "retried and the latest reset reason: connection failure"  # Envoy PR #44746
REGRESSION_BODY = CONNECT_ERROR + "reset reason: remote connection failure"  # envoy#45011

# The brief's example line: Istio's default text format, client sidecar, delimited form.
BRIEF_ACCESS_LOG_LINE = (
    '[2026-08-01T10:00:00.000Z] "GET /headers HTTP/1.1" 503 UF,URX '
    "upstream_reset_before_response_started{connection_failure,TLS_error:|268435581:SSL_routines:"
    "OPENSSL_internal:CERTIFICATE_VERIFY_FAILED:TLS_error_end} - "
    '"TLS_error:|268435581:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED:TLS_error_end" '
    '0 91 1 - "-" "curl/8.16.0" "..." "httpbin.bar:8000" "10.244.0.12:8080" '
    "outbound|8000||httpbin.bar.svc.cluster.local - 10.96.1.2:8000 10.244.0.9:51234 - default"
)


def access_log_line(*, status=503, flags="UF,URX", details="via_upstream", transport_failure="-", bytes_sent=91):
    """One client-sidecar line in Istio's default format (pilot/pkg/model/telemetry_logging.go)."""
    return (
        f'[2026-08-01T10:00:00.000Z] "GET /headers HTTP/1.1" {status} {flags} {details} - '
        f'"{transport_failure}" 0 {bytes_sent} 1 - "-" "curl/8.16.0" "0b3c6f1e-8a4d-9c2b-a7e5-1d2f3a4b5c6d" '
        f'"httpbin.bar:8000" "10.244.0.12:8080" outbound|8000||httpbin.bar.svc.cluster.local - '
        f"10.96.1.2:8000 10.244.0.9:51234 - default"
    )


def tls_failure_line(reason: str) -> str:
    """A client-sidecar line for a request whose upstream TLS handshake failed with ``reason``."""
    details_reason = reason.replace(" ", "_")  # Envoy's %RESPONSE_CODE_DETAILS% has no spaces
    return access_log_line(
        details=f"upstream_reset_before_response_started{{connection_failure,{details_reason}}}",
        transport_failure=reason,
    )


def envoy_503(*, body="", access_log="", curl_exit_code=0) -> Classification:
    return classify_envoy(curl_exit_code=curl_exit_code, http_status=503, body=body, access_log=access_log)


# --- classify_envoy: verification failures ------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "access_log", "expected_fragment"),
    [
        (CLASSIC_VERIFY_BODY, "", "TLS error: 268435581:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED"),
        (RETRIED_VERIFY_BODY, "", "TLS error: 268435581:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED"),
        (
            CONNECT_ERROR + "reset reason: connection failure, transport failure reason: " + DELIMITED_VERIFY,
            "",
            "TLS_error:|268435581:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED",
        ),
        (
            CONNECT_ERROR + "reset reason: connection failure, transport failure reason: " + DOUBLED_END_VERIFY,
            "",
            "TLS_error:|268435581:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED",
        ),
        (HIDDEN_BODY, BRIEF_ACCESS_LOG_LINE, "CERTIFICATE_VERIFY_FAILED"),
        (HIDDEN_BODY, tls_failure_line(DOUBLED_END_VERIFY), "CERTIFICATE_VERIFY_FAILED"),
        (HIDDEN_BODY, tls_failure_line(X509_DETAIL_VERIFY), "CERTIFICATE_VERIFY_FAILED:certificate has expired"),
        ("", BRIEF_ACCESS_LOG_LINE, "CERTIFICATE_VERIFY_FAILED"),  # curl -f: no body at all
    ],
    ids=[
        "classic-body",
        "retried-body",
        "delimited-body",
        "doubled-end-marker-body",
        "hidden-body-brief-log-line",
        "hidden-body-doubled-end-marker-log",
        "hidden-body-x509-detail-log",
        "no-body-log-only",
    ],
)
def test_certificate_verify_failed_in_any_known_format(body, access_log, expected_fragment):
    result = envoy_503(body=body, access_log=access_log)
    assert result.outcome is Outcome.TLS_VERIFY_FAILED, describe(result)
    assert expected_fragment in result.reason


def test_verification_failure_found_in_log_cites_the_log_line():
    result = envoy_503(body=HIDDEN_BODY, access_log=BRIEF_ACCESS_LOG_LINE)
    assert result.evidence == f"client istio-proxy access log line: {BRIEF_ACCESS_LOG_LINE}"


def test_log_source_label_appears_in_evidence():
    result = classify_envoy(
        curl_exit_code=0,
        http_status=503,
        body="",
        access_log=BRIEF_ACCESS_LOG_LINE,
        log_source="istio-proxy access log of foo/curl-7f9",
    )
    assert result.evidence.startswith("istio-proxy access log of foo/curl-7f9 line: [2026-08-01")


@pytest.mark.parametrize(
    "reason",
    [
        "TLS error: 268436502:SSL routines:OPENSSL_internal:SSLV3_ALERT_CERTIFICATE_UNKNOWN",
        "TLS_error:|268436502:SSL routines:OPENSSL_internal:SSLV3_ALERT_CERTIFICATE_UNKNOWN:TLS_error_end",
        "TLS_error:|268436504:SSL routines:OPENSSL_internal:TLSV1_ALERT_UNKNOWN_CA:TLS_error_end",
    ],
    ids=["certificate-unknown-classic", "certificate-unknown-delimited", "unknown-ca-delimited"],
)
def test_server_rejecting_our_certificate_counts_as_verification_failure(reason):
    result = envoy_503(body=HIDDEN_BODY, access_log=tls_failure_line(reason))
    assert result.outcome is Outcome.TLS_VERIFY_FAILED, describe(result)
    assert "peer rejected" in result.reason


def test_verification_failure_wins_over_other_tls_errors_in_the_same_log():
    log = "\n".join(
        [
            tls_failure_line("TLS_error:|268435703:SSL routines:OPENSSL_internal:WRONG_VERSION_NUMBER:TLS_error_end"),
            BRIEF_ACCESS_LOG_LINE,
        ]
    )
    assert envoy_503(body=HIDDEN_BODY, access_log=log).outcome is Outcome.TLS_VERIFY_FAILED


# --- classify_envoy: other TLS failures, connection failures, hidden reasons ------------------------------


@pytest.mark.parametrize(
    ("reason", "name"),
    [
        ("TLS_error:|268435703:SSL routines:OPENSSL_internal:WRONG_VERSION_NUMBER:TLS_error_end", "WRONG_VERSION_NUMBER"),
        (
            "TLS_error:|268436526:SSL routines:OPENSSL_internal:TLSV1_ALERT_PROTOCOL_VERSION:TLS_error_end",
            "TLSV1_ALERT_PROTOCOL_VERSION",
        ),
        ("TLS error: 268436496:SSL routines:OPENSSL_internal:SSLV3_ALERT_HANDSHAKE_FAILURE", "SSLV3_ALERT_HANDSHAKE_FAILURE"),
        ("TLS error: Secret is not supplied by SDS", "Secret is not supplied by SDS"),
    ],
    ids=["wrong-version", "protocol-version", "handshake-failure", "no-boringssl-code"],
)
def test_other_tls_errors_are_not_verification_failures(reason, name):
    result = envoy_503(body=HIDDEN_BODY, access_log=tls_failure_line(reason))
    assert result.outcome is Outcome.TLS_OTHER_FAILURE, describe(result)
    assert name in result.reason


@pytest.mark.parametrize(
    ("body", "access_log", "seen"),
    [
        (REGRESSION_BODY, "", "reset reason: remote connection failure"),
        (HIDDEN_BODY, "", "retried and the latest reset reason: connection failure"),
        (
            REGRESSION_BODY,
            access_log_line(details="upstream_reset_before_response_started{remote_connection_failure}"),
            "upstream_reset_before_response_started{remote_connection_failure",
        ),
        ("no healthy upstream", "", "no healthy upstream"),
    ],
    ids=["regression-body", "hidden-body-no-log", "regression-log-line", "no-healthy-upstream"],
)
def test_failure_without_any_tls_reason_is_a_connection_failure(body, access_log, seen):
    # Istio's own test would accept "remote connection failure" as a rejection; we keep
    # the classes honest and say exactly what was (and was not) seen.
    result = envoy_503(body=body, access_log=access_log)
    assert result.outcome is Outcome.CONNECTION_FAILURE, describe(result)
    assert seen in result.reason
    assert "no TLS failure reason reported" in result.reason


def test_response_flags_alone_mean_connection_failure():
    result = envoy_503(access_log=access_log_line(flags="UF,URX", details="-"))
    assert result.outcome is Outcome.CONNECTION_FAILURE
    assert "response flags UF,URX" in result.reason


def test_upstream_request_timeout_flag_means_timeout():
    line = access_log_line(status=504, flags="UT", details="response_timeout")
    result = classify_envoy(curl_exit_code=0, http_status=504, body="upstream request timeout", access_log=line)
    assert result.outcome is Outcome.TIMEOUT


# --- classify_envoy: status, curl exit codes, sidecar -----------------------------------------------------


def test_http_200_is_ok_even_with_earlier_failures_in_the_log():
    result = classify_envoy(
        curl_exit_code=0, http_status=200, body="{}", access_log=BRIEF_ACCESS_LOG_LINE
    )
    assert result.outcome is Outcome.OK
    assert result.reason == "HTTP 200"


@pytest.mark.parametrize(("kwargs", "reason"), [
    ({"curl_exit_code": 28}, "curl exit 28"),
    ({"curl_exit_code": None, "timed_out": True}, "deadline"),
])
def test_timeouts(kwargs, reason):
    result = classify_envoy(http_status=None, body="", access_log="", **kwargs)
    assert result.outcome is Outcome.TIMEOUT
    assert reason in result.reason


def test_curl_connect_failure_without_log_is_connection_failure():
    result = classify_envoy(curl_exit_code=7, http_status=None, body="", access_log="")
    assert result.outcome is Outcome.CONNECTION_FAILURE
    assert result.reason == "curl exit 7: failed to connect"


def test_curl_fail_flag_without_log_is_http_error():
    result = classify_envoy(curl_exit_code=22, http_status=None, body="", access_log="")
    assert result.outcome is Outcome.HTTP_ERROR


def test_server_refusal_without_transport_failure_is_http_error():
    line = access_log_line(status=403, flags="-", details="via_upstream")
    result = classify_envoy(curl_exit_code=0, http_status=403, body="RBAC: access denied", access_log=line)
    assert result.outcome is Outcome.HTTP_ERROR
    assert result.reason == "HTTP 403"


def test_missing_sidecar_overrides_everything():
    result = classify_envoy(
        curl_exit_code=0, http_status=200, body="{}", access_log="", sidecar_present=False
    )
    assert result.outcome is Outcome.NO_SIDECAR


def test_access_log_format_matches_istio_default_fields():
    fields = ISTIO_ACCESS_LOG_LINE.search(BRIEF_ACCESS_LOG_LINE)
    assert fields is not None
    assert fields["status"] == "503"
    assert fields["flags"] == "UF,URX"
    assert fields["transport_failure"] == DELIMITED_VERIFY


def test_describe_is_one_line_with_outcome_reason_and_evidence():
    line = describe(envoy_503(body=CLASSIC_VERIFY_BODY))
    assert line.startswith("tls-verify-failed: TLS error: 268435581")
    assert "[seen in response body: upstream connect error" in line
    assert "\n" not in line
