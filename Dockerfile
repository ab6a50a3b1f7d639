# syntax=docker/dockerfile:1
# Multi-stage build: the gateway and its dependencies are installed into a virtual environment
# in one stage, and the runtime stage copies only that environment: no wheel files, pip cache,
# build tool or compiler reach the image. It runs as a non-root user with a fixed numeric id
# (so Kubernetes' runAsNonRoot can check it). Every dependency ships wheels for linux/amd64 and
# linux/arm64, so `docker buildx build --platform linux/amd64,linux/arm64 .` needs no compiler
# (see docs/deploy.md). Linted by hadolint and built and run by tests/deploy/test_image.py.

FROM python:3.11-slim AS build
RUN python -m venv --without-pip /opt/ollama-gateway
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY app ./app
# The cache mount keeps downloads between builds (BuildKit, buildah) and never lands in a
# layer. (The job queue's libpq comes with psycopg[binary], a dependency: the slim base has none.)
RUN --mount=type=cache,target=/root/.cache/pip \
    pip --python /opt/ollama-gateway/bin/python install --disable-pip-version-check .

FROM python:3.11-slim AS runtime
# The default database is a SQLite file on the volume below, beside the spool: `docker run
# -v ollama-gateway:/var/lib/ollama-gateway` keeps every result when the container is
# replaced. Deployments with several processes set GATEWAY_DATABASE_URL to PostgreSQL.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/ollama-gateway/bin:$PATH \
    GATEWAY_HOST=0.0.0.0 \
    GATEWAY_PORT=8000 \
    GATEWAY_MIGRATIONS_DIR=/srv/migrations \
    GATEWAY_DATABASE_URL=sqlite+aiosqlite:////var/lib/ollama-gateway/gateway.db \
    GATEWAY_SPOOL_DIR=/var/lib/ollama-gateway/spool
# The user's home is its data directory: nothing it writes lands outside the volume.
RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid gateway --no-create-home \
       --home-dir /var/lib/ollama-gateway --shell /usr/sbin/nologin gateway \
    && mkdir -p /var/lib/ollama-gateway/spool \
    && chown -R 10001:10001 /var/lib/ollama-gateway
# The gateway and its dependencies, the OpenTelemetry SDK, exporters and instrumentations
# included (tracing stays off, and unimported, until OTEL_EXPORTER_OTLP_ENDPOINT is set).
COPY --from=build /opt/ollama-gateway /opt/ollama-gateway
WORKDIR /srv
COPY migrations ./migrations
VOLUME ["/var/lib/ollama-gateway"]
USER 10001:10001
EXPOSE 8000
# Asks the port the gateway listens on (GATEWAY_PORT), on loopback.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('GATEWAY_PORT', '8000'); sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=2).status == 200 else 1)"]
# One container on its own: upgrade the schema, then serve. Several replicas: run
# `ollama-gateway migrate` once (a one-shot service, a Job, an init container), then serve.
# With no GATEWAY_ADMIN_KEY it refuses to serve on 0.0.0.0, saying how to make one.
CMD ["sh", "-c", "ollama-gateway migrate && exec ollama-gateway serve"]
