# Heartbeat Bridge. Build with a local base image if needed:
#   docker build --build-arg PYTHON_IMAGE=my-registry/python:3.11-slim -t heartbeat-bridge .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    BRIDGE_STORE_URL=sqlite:////data/bridge.db \
    BRIDGE_BIND=0.0.0.0:8000

WORKDIR /app
COPY requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt
COPY pyproject.toml README.md ./
COPY bridge ./bridge
# shipped inside the package as data (the rules, the Alertmanager example, the dashboards)
COPY alerts ./alerts
COPY dashboards ./dashboards
RUN pip install --no-cache-dir --no-deps . \
 && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin bridge \
 && mkdir -p /data \
 && chown bridge /data

USER bridge
VOLUME ["/data"]
EXPOSE 8000
# Probes the default BRIDGE_BIND port; change both together.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"]
ENTRYPOINT ["heartbeat-bridge"]
CMD ["serve"]
