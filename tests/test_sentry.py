"""Sentry cron check-ins: the real sentry-sdk against a live bridge, and the envelope format by hand."""

from __future__ import annotations

import gzip
import json
import logging
import zlib

import brotli
import pytest
import requests
import sentry_sdk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sentry_sdk.crons import capture_checkin, monitor

from support import samples, total

KEY = "0123456789abcdef0123456789abcdef"
ENVELOPE = "/api/42/envelope/"
AUTH = {"X-Sentry-Auth": f"Sentry sentry_key={KEY}, sentry_version=7, sentry_client=sentry.python/2.75.0"}
CONFIG = {
    "schedule": {"type": "crontab", "value": "0 3 * * *"},
    "timezone": "Europe/Berlin",
    "checkin_margin": 5,
    "max_runtime": 30,
    "failure_issue_threshold": 2,
    "owner": "team:data",
}


@pytest.fixture
def settings_overrides():
    return {"sentry_keys": (KEY,)}


def envelope(*items: tuple[dict, bytes | dict], header: dict | None = None) -> bytes:
    """Return an envelope of (item header, payload) pairs, as the SDKs write them."""
    lines = [json.dumps(header if header is not None else {"event_id": "9ec79c33ec9942ab8353589fcb2e04dc"}).encode()]
    for item_header, payload in items:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        lines += [json.dumps(item_header).encode(), body]
    return b"\n".join(lines) + b"\n"


def check_in(status: str, check_in_id: str = "a" * 32, slug: str = "nightly-crawl", **fields) -> tuple[dict, dict]:
    return {"type": "check_in"}, {"check_in_id": check_in_id, "monitor_slug": slug, "status": status, **fields}


def post(client, body: bytes, headers: dict | None = None, **kwargs):
    return client.post(
        ENVELOPE,
        data=body,
        headers={**AUTH, "Content-Type": "application/x-sentry-envelope", **(headers or {})},
        **kwargs,
    )


def task(client, name="nightly-crawl") -> dict:
    return client.get(f"/api/v1/tasks/{name}").json


def rejected(client, reason) -> float:
    return total(
        samples(client.get("/metrics").data.decode()),
        "bridge_requests_rejected_total",
        endpoint="sentry",
        reason=reason,
    )


def test_it_makes_a_task_of_a_monitor_config_and_a_run_of_its_check_ins(client):
    response = post(client, envelope(check_in("in_progress", monitor_config=CONFIG)))
    assert (response.status_code, response.json) == (200, {"id": "9ec79c33ec9942ab8353589fcb2e04dc"})
    crawl = task(client)
    assert (
        crawl["schedule"],
        crawl["timezone"],
        crawl["start_grace_seconds"],
        crawl["max_runtime_seconds"],
        crawl["failure_threshold"],
        crawl["labels"],
    ) == ("0 3 * * *", "Europe/Berlin", 300, 1800, 2, {"team": "data"})
    assert crawl["status"] == "new" and crawl["running"] == ["a" * 32]
    post(client, envelope(check_in("error", duration=12.5, monitor_config=CONFIG)))
    run = client.get(f"/api/v1/executions/{'a' * 32}").json
    assert (run["status"], run["result_data"], run["task_name"]) == ("failed", {"duration": 12.5}, "nightly-crawl")
    assert task(client)["consecutive_failures"] == 1 and task(client)["status"] != "failing"  # threshold 2


def test_it_reads_an_interval_schedule_in_sentrys_units(client):
    config = {"schedule": {"type": "interval", "value": 2, "unit": "hour"}, "checkin_margin": 1}
    post(client, envelope(check_in("ok", slug="hourly-sync", monitor_config=config)))
    sync = task(client, "hourly-sync")
    assert (sync["period_seconds"], sync["start_grace_seconds"], sync["status"]) == (7200, 60, "up")


def test_it_takes_other_items_and_drops_them(client):
    attachment = b"line one\nline two\n\x00binary"
    body = envelope(
        ({"type": "event"}, {"exception": {"values": [{"type": "ValueError"}]}}),
        ({"type": "attachment", "length": len(attachment), "filename": "log.txt"}, attachment),
        check_in("ok"),
        ({"type": "client_report"}, {"discarded_events": []}),
    )
    assert post(client, body).status_code == 200
    assert task(client)["runs"] == 1 and [t["task_name"] for t in client.get("/api/v1/tasks").json["tasks"]] == [
        "nightly-crawl"
    ]


@pytest.mark.parametrize(
    "encoding, compress",
    [
        ("gzip", gzip.compress),
        ("deflate", zlib.compress),
        ("deflate", lambda data: zlib.compress(data, wbits=-zlib.MAX_WBITS)),  # raw deflate, as some clients send
        ("br", brotli.compress),
    ],
)
def test_it_decodes_compressed_envelopes(client, encoding, compress):
    response = post(client, compress(envelope(check_in("ok"))), {"Content-Encoding": encoding})
    assert response.status_code == 200 and task(client)["runs"] == 1


@pytest.mark.parametrize(
    "body, headers, url, status, reason",
    [
        (envelope(check_in("ok")), {"X-Sentry-Auth": "Sentry sentry_key=wrong"}, ENVELOPE, 401, "unauthorized"),
        (envelope(check_in("ok")), {"X-Sentry-Auth": ""}, ENVELOPE, 401, "unauthorized"),
        (envelope(check_in("timeout")), {}, ENVELOPE, 400, "invalid_field"),
        (envelope(check_in("ok", slug="")), {}, ENVELOPE, 400, "invalid_field"),
        (
            envelope(check_in("ok", monitor_config={"schedule": {"type": "crontab", "value": "every day"}})),
            {},
            ENVELOPE,
            400,
            "invalid_field",
        ),
        (
            envelope(
                check_in("ok", monitor_config={"schedule": {"type": "interval", "value": 1, "unit": "fortnight"}})
            ),
            {},
            ENVELOPE,
            400,
            "invalid_field",
        ),
        (b"not json\n", {}, ENVELOPE, 400, "invalid_json"),
        (
            b"{}\n" + json.dumps({"type": "check_in", "length": 999}).encode() + b"\n{}",
            {},
            ENVELOPE,
            400,
            "invalid_json",
        ),
        (b"\x1f\x8b not gzip", {"Content-Encoding": "gzip"}, ENVELOPE, 400, "invalid_json"),
        (envelope(check_in("ok")), {"Content-Encoding": "zstd"}, ENVELOPE, 415, "unsupported_media_type"),
        (envelope(check_in("ok")), {"X-Sentry-Auth": ""}, f"{ENVELOPE}?sentry_key=wrong", 401, "unauthorized"),
    ],
)
def test_it_refuses_a_bad_envelope_with_sentrys_detail_and_keeps_nothing_of_it(
    client, body, headers, url, status, reason
):
    assert post(client, envelope(check_in("ok", check_in_id="b" * 32, slug="earlier"))).status_code == 200
    response = client.post(url, data=body, headers={**AUTH, **headers})
    assert response.status_code == status and response.json["detail"]
    assert rejected(client, reason) == 1
    assert client.get("/api/v1/tasks/nightly-crawl").status_code == 404
    assert task(client, "earlier")["runs"] == 1  # what was accepted before stays


def test_it_refuses_an_envelope_past_the_batch_body_limit_even_once_decoded(app, client):
    limit = app.extensions["heartbeat_bridge"].settings.max_batch_body_bytes
    padding = ({"type": "attachment"}, b"x" * limit)
    response = post(client, gzip.compress(envelope(check_in("ok"), padding)), {"Content-Encoding": "gzip"})
    assert response.status_code == 413 and rejected(client, "too_large") == 1
    assert client.get("/api/v1/tasks/nightly-crawl").status_code == 404


def test_it_goes_missed_when_a_sentry_monitor_stops_checking_in(client, clock, monitor):
    config = {"schedule": {"type": "interval", "value": 1, "unit": "hour"}, "checkin_margin": 5}
    post(client, envelope(check_in("in_progress", monitor_config=config)))
    post(client, envelope(check_in("ok", duration=3.0, monitor_config=config)))
    clock.advance(3600 + 300 - 3)
    monitor.reap()
    assert task(client)["status"] == "late"
    clock.advance(4)
    monitor.reap()
    parsed = samples(client.get("/metrics").data.decode())
    assert total(parsed, "task_status", task_name="nightly-crawl", status="missed") == 1
    assert total(parsed, "task_runs_missed_total", task_name="nightly-crawl") == 1
    assert total(parsed, "task_info", task_name="nightly-crawl") == 1


def test_it_takes_the_plain_http_check_ins_of_sentrys_docs(client):
    cron = f"/api/42/cron/nightly-crawl/{KEY}/"
    opened = client.get(cron + "?status=in_progress")
    assert opened.status_code == 202 and task(client)["running"] == [opened.json["id"]]
    assert client.get(cron + "?status=ok").status_code == 202  # no id: closes the run the in_progress opened
    assert (task(client)["runs"], task(client)["running"]) == (1, [])
    upsert = client.post(cron + "?status=in_progress&check_in_id=run-2", json={"monitor_config": CONFIG})
    assert (upsert.status_code, upsert.json) == (202, {"id": "run-2"}) and task(client)["schedule"] == "0 3 * * *"
    assert client.post(cron + "?status=error&check_in_id=run-2").status_code == 202
    assert task(client)["consecutive_failures"] == 1
    wrong = client.get("/api/42/cron/nightly-crawl/not-the-key/?status=ok")
    assert wrong.status_code == 401 and rejected(client, "unauthorized") == 1


#: What broke the first doors: numbers past a float, lone surrogates, lists and objects where text goes.
_odd = st.sampled_from([10**400, -(10**400), 1e308, "\ud800", "team:\ud800", ["ok"], {"ok": 1}, "latest"])
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20) | _odd,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=3),
    max_leaves=8,
)
_check_in = st.fixed_dictionaries(
    {},
    optional={
        "monitor_slug": st.one_of(st.text(max_size=140), _json),
        "status": st.sampled_from(["in_progress", "ok", "error", "x"]),
        "check_in_id": st.one_of(st.text(max_size=140), _json),
        "duration": _json,
        "monitor_config": st.one_of(
            _json,
            st.fixed_dictionaries(
                {},
                optional={
                    "schedule": st.one_of(
                        _json,
                        st.fixed_dictionaries(
                            {"type": st.sampled_from(["crontab", "interval"]), "value": _json, "unit": _json}
                        ),
                    ),
                    "checkin_margin": _json,
                    "max_runtime": _json,
                    "failure_issue_threshold": _json,
                    "timezone": _json,
                    "owner": _json,
                },
            ),
        ),
    },
)


@given(
    payload=_check_in,
    raw=st.binary(max_size=200),
    encoding=st.sampled_from(["", "gzip", "br", "deflate"]),
    use_raw=st.booleans(),
)
@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_it_never_answers_500_to_any_envelope(client, payload, raw, encoding, use_raw):
    body = raw if use_raw else envelope(({"type": "check_in"}, payload))
    response = post(client, body, {"Content-Encoding": encoding} if encoding else {})
    assert response.status_code < 500, (payload, response.json)


@given(
    slug=st.text(
        alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="/?#%"), min_size=1, max_size=140
    ),
    query=st.dictionaries(
        st.sampled_from(["status", "check_in_id", "sentry_key"]),
        st.one_of(st.sampled_from(["in_progress", "ok", "error", "latest"]), st.text(max_size=40)),
        max_size=3,
    ),
    config=st.one_of(st.none(), _json),
    method=st.sampled_from(["get", "post", "head"]),
)
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_it_never_answers_500_to_any_http_check_in(client, slug, query, config, method):
    kwargs = (
        {"data": json.dumps({"monitor_config": config}), "content_type": "application/json"} if method == "post" else {}
    )
    response = getattr(client, method)(f"/api/42/cron/{slug}/{KEY}/", query_string=query, **kwargs)
    assert response.status_code < 500, (slug, query, response.data)


@pytest.mark.parametrize(
    "body, field",
    [
        (b"[" * 100_000 + b"]" * 100_000 + b"\n", "body"),
        (b'{}\n{"type":"check_in"}\n' + b"[" * 100_000 + b"]" * 100_000 + b"\n", "body"),
        (
            b'{}\n{"type":"check_in"}\n{"monitor_slug": "s", "status": "ok", "duration": 1' + b"0" * 400 + b"}\n",
            "duration",
        ),
    ],
    ids=["deep-header", "deep-check-in", "duration-401-digits"],
)
def test_it_refuses_a_deep_or_huge_envelope_naming_the_field(client, body, field):
    response = post(client, body)
    assert (response.status_code, response.json["field"]) == (400, field)


class TestSentrySdk:
    """The real sentry-sdk, its transport and its compression, pointed at a live bridge."""

    @pytest.fixture
    def dsn(self, live_bridge):
        bridge = live_bridge(env={"BRIDGE_SENTRY_KEYS": KEY})
        self.url = bridge.url
        return bridge.url.replace("http://", f"http://{KEY}@") + "/42"

    @pytest.fixture
    def sdk_errors(self, caplog):
        """Return what the SDK logged as errors (with ``debug``: a refused envelope is one)."""
        caplog.set_level(logging.WARNING, logger="sentry_sdk.errors")
        yield lambda: [
            r.getMessage() for r in caplog.records if r.name == "sentry_sdk.errors" and r.levelno >= logging.WARNING
        ]
        sentry_sdk.get_client().close()
        sentry_sdk.init(dsn=None, default_integrations=False)  # leave no client behind

    @staticmethod
    def sdk(dsn: str, **options) -> None:
        sentry_sdk.init(dsn=dsn, default_integrations=False, auto_enabling_integrations=False, debug=True, **options)

    @staticmethod
    def sent_encoding() -> str | None:
        transport = sentry_sdk.get_client().transport
        return transport._compression_algo if transport._compression_level else None

    @pytest.mark.parametrize(
        "algo, options",
        [
            ("gzip", {"transport_compression_algo": "gzip"}),
            ("br", {"transport_compression_algo": "br"}),
            (None, {"transport_compression_level": 0}),
        ],
    )
    def test_it_takes_the_monitor_decorator_and_context_manager(self, dsn, sdk_errors, algo, options):
        self.sdk(dsn, _experiments=options)
        assert self.sent_encoding() == algo

        @monitor(monitor_slug="nightly-crawl", monitor_config=CONFIG)
        def crawl() -> int:
            return 3

        assert crawl() == 3
        with pytest.raises(RuntimeError):
            try:
                with monitor(monitor_slug="nightly-crawl", monitor_config=CONFIG):
                    raise RuntimeError("the site is down")
            except RuntimeError as exc:
                sentry_sdk.capture_exception(exc)  # an error event beside the check-ins, dropped
                raise
        sentry_sdk.flush(timeout=10)
        assert sdk_errors() == []
        crawl_task = requests.get(f"{self.url}/api/v1/tasks/nightly-crawl", timeout=10).json()
        assert (crawl_task["schedule"], crawl_task["labels"], crawl_task["runs"]) == ("0 3 * * *", {"team": "data"}, 2)
        failed, succeeded = crawl_task["last_executions"]
        assert (failed["status"], succeeded["status"]) == ("failed", "completed")
        run = requests.get(f"{self.url}/api/v1/executions/{succeeded['execution_id']}", timeout=10).json()
        assert run["result_data"]["duration"] >= 0

    def test_it_takes_capture_checkin_with_its_own_duration(self, dsn, sdk_errors):
        self.sdk(dsn)
        check_in_id = capture_checkin(
            monitor_slug="import-job",
            status="in_progress",
            monitor_config={"schedule": {"type": "interval", "value": 15, "unit": "minute"}},
        )
        sentry_sdk.flush(timeout=10)
        running = requests.get(f"{self.url}/api/v1/tasks/import-job", timeout=10).json()
        assert running["running_count"] == 1 and running["running"] == [check_in_id]
        capture_checkin(monitor_slug="import-job", check_in_id=check_in_id, status="ok", duration=42.0)
        sentry_sdk.flush(timeout=10)
        assert sdk_errors() == []
        run = requests.get(f"{self.url}/api/v1/executions/{check_in_id}", timeout=10).json()
        assert (run["status"], run["result_data"]) == ("completed", {"duration": 42.0})
        job = requests.get(f"{self.url}/api/v1/tasks/import-job", timeout=10).json()
        assert (job["period_seconds"], job["status"]) == (900, "up")

    def test_it_refuses_a_key_it_does_not_know_so_the_sdk_says_so(self, dsn, sdk_errors):
        self.sdk(dsn.replace(KEY, "f" * 32))
        capture_checkin(monitor_slug="import-job", status="ok")
        sentry_sdk.flush(timeout=10)
        assert any("401" in message for message in sdk_errors())
        assert requests.get(f"{self.url}/api/v1/tasks/import-job", timeout=10).status_code == 404
