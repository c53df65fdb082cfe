# syntax=docker/dockerfile:1
#
# usgi-docs container image: `usgi serve` (HTTP API, FHIR, web UI and the DICOM SCP in one process).
#
#   docker build -t usgi-docs .
#   docker run -p 8080:8080 -p 11112:11112 -v usgi-data:/var/lib/usgi usgi-docs
#
# The entrypoint runs `usgi migrate`, then replaces itself with `usgi serve`, which gets SIGTERM
# directly and finishes the DICOM associations in flight before it exits. Any other command
# (`docker run ... usgi token create --role admin`) runs as given, without the migration.
# No secrets are baked in: database credentials come from the environment at run time.

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# ---------------------------------------------------------------------------------------------
# builder: build the project's wheel and install it with its dependencies into /opt/venv
# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH

RUN python -m venv /opt/venv

WORKDIR /src

# Dependencies first, from pyproject.toml alone, so that a source change does not reinstall them.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt

COPY README.md ./
COPY schemas ./schemas
COPY service ./service
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /tmp/dist . \
    && pip install --no-cache-dir --no-deps /tmp/dist/usgi_docs-*.whl \
    && usgi --help > /dev/null

# ---------------------------------------------------------------------------------------------
# runtime: the venv, a non-root user and nothing else (no compiler, no curl)
# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

ARG USGI_UID=10001
ARG USGI_GID=10001

LABEL org.opencontainers.image.title="usgi-docs" \
      org.opencontainers.image.description="Documentation service for ultrasound-guided injections: DICOM ingest, procedure reports, FHIR R4."

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    USGI_DATA_DIR=/var/lib/usgi \
    USGI_HTTP_HOST=0.0.0.0 \
    USGI_HTTP_PORT=8080 \
    USGI_DICOM_HOST=0.0.0.0 \
    USGI_DICOM_PORT=11112

RUN groupadd --system --gid "${USGI_GID}" usgi \
    && useradd --system --uid "${USGI_UID}" --gid usgi --home-dir /var/lib/usgi --no-create-home \
        --shell /usr/sbin/nologin usgi \
    && mkdir -p /var/lib/usgi \
    && chown usgi:usgi /var/lib/usgi \
    && chmod 0750 /var/lib/usgi

COPY --from=builder /opt/venv /opt/venv

# Migrate, then become `usgi serve` (exec: no shell stays between Docker's SIGTERM and the service).
COPY --chmod=0755 <<'EOF' /usr/local/bin/usgi-entrypoint
#!/bin/sh
set -eu
if [ "$#" -eq 0 ]; then
    set -- usgi serve
fi
if [ "$1" = "usgi" ] && [ "${2:-}" = "serve" ]; then
    usgi migrate
fi
exec "$@"
EOF

USER ${USGI_UID}:${USGI_GID}
WORKDIR /var/lib/usgi
VOLUME ["/var/lib/usgi"]

EXPOSE 8080/tcp 11112/tcp

HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; r = urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('USGI_HTTP_PORT', '8080'), timeout=4); sys.exit(0 if r.status == 200 else 1)"]

STOPSIGNAL SIGTERM

ENTRYPOINT ["/usr/local/bin/usgi-entrypoint"]
CMD ["usgi", "serve"]
