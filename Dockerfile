# syntax=docker/dockerfile:1
# Multi-stage build: the wheel is built in one stage, the runtime image stays slim and runs as
# a non-root user with a fixed numeric id (so Kubernetes' runAsNonRoot can check it).
# Linted by hadolint in .ci/run.

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GATEWAY_HOST=0.0.0.0 \
    GATEWAY_PORT=8000 \
    GATEWAY_MIGRATIONS_DIR=/srv/migrations \
    GATEWAY_SPOOL_DIR=/var/lib/ollama-gateway/spool
# The spool (results kept while the database does not answer) wants a persistent volume
# here: docker-compose.yml and the Kubernetes manifests mount one.
RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid gateway --create-home gateway \
    && mkdir -p /var/lib/ollama-gateway/spool \
    && chown -R 10001:10001 /var/lib/ollama-gateway
# Every dependency's wheel, the OpenTelemetry SDK, exporters and instrumentations included
# (tracing stays off, and unimported, until OTEL_EXPORTER_OTLP_ENDPOINT is set).
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
WORKDIR /srv
COPY migrations ./migrations
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status == 200 else 1)"]
# One container on its own: upgrade the schema, then serve. Several replicas: run
# `ollama-gateway migrate` once (a one-shot service, a Job, an init container), then serve.
CMD ["sh", "-c", "ollama-gateway migrate && exec ollama-gateway serve"]
