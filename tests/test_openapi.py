"""GET /api/v1/openapi.json, and schemathesis checking the API against it."""

from __future__ import annotations

import re

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig

from bridge.service.config import load_settings
from bridge.web import create_app


def test_it_serves_an_openapi_3_document_with_every_route(client):
    spec = client.get("/api/v1/openapi.json").json
    assert spec["openapi"].startswith("3.")
    served = {
        re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        for rule in client.application.url_map.iter_rules()
        if rule.endpoint != "static"
    }
    assert served == set(spec["paths"]) | {"/api/v1/openapi.json"}


def _app():
    import tempfile

    folder = tempfile.mkdtemp(prefix="schemathesis-")
    return create_app({"SETTINGS": load_settings({}, store_url=f"sqlite:///{folder}/bridge.db")})


# The document declares 413 for values past their limits: a rejection like 400. Strings
# must be UTF-8 (a lone surrogate cannot be stored), which JSON Schema cannot say.
# A task declaration's cron expression and time zone are checked by cronsim and the time zone
# database, which no JSON Schema can say: there a schema-valid body may still get 400. Nor
# can it say what a Sentry envelope is: any bytes are schema-valid there.
_CONFIG = SchemathesisConfig.from_dict(
    {
        "generation": {"codec": "utf-8"},
        "checks": {"negative_data_rejection": {"expected-statuses": ["400", "401", "403", "404", "413", "415", "422"]}},
        "operations": [
            {
                "include-path-regex": "^/api/v1/(tasks/|monitoring/heartbeat$)",
                "checks": {"positive_data_acceptance": {"expected-statuses": ["2XX", "400", "401", "403", "404"]}},
            },
            {
                # a check-in id that names another monitor's run, or a monitor another project made, is a 409
                "include-path-regex": "^/api/[^/]+/(envelope|cron)/",
                "checks": {
                    "positive_data_acceptance": {"expected-statuses": ["2XX", "400", "401", "403", "404", "409"]}
                },
            },
            {
                "include-path-regex": "^/ping/",
                "checks": {"positive_data_acceptance": {"expected-statuses": ["2XX", "400", "404", "409"]}},
            },
        ],
    }
)
# Sentry SDKs send envelopes as application/x-sentry-envelope: bytes, as octet-stream is.
schemathesis.serializer.alias("application/x-sentry-envelope", "application/octet-stream")
schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", _app(), config=_CONFIG)


@schema.parametrize()
@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_it_keeps_to_its_openapi_document(case):
    case.call_and_validate()
