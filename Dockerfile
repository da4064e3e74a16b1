# Trainyard service image: the API (`python run.py api`, the default) and the agent
# (`python run.py agent`) from one image.
#
#   docker build -t trainyard/service:latest .                 # with a registry and PyPI
#   scripts/ensure-service-image.sh                            # offline (what `make test` does)
#
# BASE_IMAGE is python:3.11-slim for anyone with a registry. scripts/ensure-service-image.sh
# passes trainyard/base-service:bookworm instead: a Debian minbase with python3 + python3-venv
# built with mmdebstrap (no registry), and builds with WHEELHOUSE_ONLY=1, because an engine with
# no network cannot reach PyPI during `docker build`: the script first fills .build/wheelhouse/
# on the host (`pip wheel`) and the build installs from it alone. Any Python 3.11+ base with
# `python3 -m venv` works.
ARG BASE_IMAGE=python:3.11-slim

# --- stage 1: wheels of every dependency and of Trainyard, installed into /opt/venv ---------
FROM ${BASE_IMAGE} AS wheels
ARG WHEELHOUSE_ONLY=0
# Lets scripts/ensure-service-image.sh find this stage's leftovers of earlier builds.
LABEL trainyard.stage=service-wheels
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# Wheels prepared on the host by scripts/ensure-service-image.sh. The pattern lets a plain
# `docker build .` work without them (pyproject.toml is only there so the COPY never matches
# nothing); pip then downloads what it needs.
COPY pyproject.toml .build/wheelhous[e] /wheelhouse/
# Dependencies first, so that a code change does not rebuild them (the layer cache keeps this
# step while pyproject.toml is unchanged). pyproject.toml names README.md as the long
# description: an empty one will do (the real one changes too often to be a cache key).
COPY pyproject.toml ./
RUN set -eu; \
    offline=; [ "$WHEELHOUSE_ONLY" = 1 ] && offline=--no-index; \
    python3 -m venv /opt/build-venv; \
    mkdir -p agent api; \
    : >README.md; \
    /opt/build-venv/bin/pip wheel $offline --find-links /wheelhouse --wheel-dir /wheels . ; \
    rm -f /wheels/trainyard-*.whl; \
    python3 -m venv /opt/venv; \
    /opt/venv/bin/pip install --no-index --no-deps /wheels/*.whl
COPY agent/ agent/
COPY api/ api/
RUN set -eu; \
    offline=; [ "$WHEELHOUSE_ONLY" = 1 ] && offline=--no-index; \
    /opt/build-venv/bin/pip wheel $offline --no-deps --find-links /wheelhouse --wheel-dir /wheels . ; \
    /opt/venv/bin/pip install --no-index --find-links /wheels trainyard; \
    /opt/venv/bin/pip uninstall -y pip; \
    /opt/venv/bin/python -c 'import agent.wiring, api.app, uvicorn, psycopg'

# --- stage 2: the runtime image: the venv, run.py and an unprivileged user ------------------
FROM ${BASE_IMAGE}
# uid 10001: not the jobs' uid 1000, so the API user owns nothing a job writes.
RUN set -eu; \
    if command -v useradd >/dev/null 2>&1; then \
        groupadd --system --gid 10001 trainyard; \
        useradd --system --uid 10001 --gid 10001 --no-log-init --home-dir /app \
            --shell /usr/sbin/nologin trainyard; \
    else \
        echo 'trainyard:x:10001:' >>/etc/group; \
        echo 'trainyard:x:10001:10001:trainyard:/app:/usr/sbin/nologin' >>/etc/passwd; \
    fi; \
    mkdir -p /app /var/lib/trainyard/data /var/lib/trainyard/logs; \
    chown 10001:10001 /var/lib/trainyard/data /var/lib/trainyard/logs
COPY --from=wheels /opt/venv /opt/venv
COPY run.py /app/run.py
WORKDIR /app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TRAINYARD_DATA_DIR=/var/lib/trainyard/data \
    TRAINYARD_LOG_DIR=/var/lib/trainyard/logs

# The API runs unprivileged. The agent needs the Docker socket (root-equivalent on the host
# anyway) and chowns each job's outputs directory to the jobs' uid, so docker-compose.yml runs
# the agent as root (`user: root`).
USER 10001:10001
EXPOSE 8000

# Healthy when the API answers 200 on /health (database and Docker engine reachable). Only the
# API serves HTTP: run the agent with `--no-healthcheck` (compose: `healthcheck: disable: true`).
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as r; h = os.environ.get('TRAINYARD_HOST', '127.0.0.1'); h = '127.0.0.1' if h in ('0.0.0.0', '::', '') else h; h = '[' + h + ']' if ':' in h else h; r.urlopen('http://%s:%s/health' % (h, os.environ.get('TRAINYARD_PORT', '8000')), timeout=4)"]

ENTRYPOINT ["python", "/app/run.py"]
CMD ["api"]
