"""The baseline: a Flask app that only parses the heartbeat's JSON and answers ok.

Run by the benchmark under the bridge's own gunicorn configuration, so that the ratio
of the two ingest rates is the cost of what the bridge does with a heartbeat.
"""

from flask import Flask, jsonify, request


def create_app() -> Flask:
    """Return the bare app."""
    app = Flask(__name__)

    @app.post("/api/v1/monitoring/heartbeat")
    def heartbeat():
        body = request.get_json()
        return jsonify(status="ok", execution_id=body.get("execution_id"))

    return app
