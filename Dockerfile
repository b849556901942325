# FlexBin image for the api, worker and migrate services of docker-compose.yml.
#
#   docker build -t flexbin .        # on the official python:3.11-slim, packages from PyPI
#
# BASE_IMAGE: any Debian-like image with Python 3.11 and its venv module (tools/compose_check.sh
# builds one from Debian packages where no registry can be reached). WHEELHOUSE_URL: empty =
# PyPI; else a folder of wheels served over HTTP, the only source then (pip --no-index
# --find-links): the check serves one on loopback and builds with `--network host`, so the
# several GB of torch and its CUDA libraries come from this machine's disk.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/flexbin PATH=/opt/flexbin/bin:$PATH
# A virtualenv gives the same layout on the official image and on a Debian base, whose
# python3 refuses pip installs into the system (PEP 668). The service user owns only /app/var,
# where the embedded SQLite default (`docker run` with no DATABASE_URL) keeps its files: the
# code stays root's.
RUN python3 -m venv /opt/flexbin \
    && groupadd --system --gid 10001 flexbin \
    && useradd --system --uid 10001 --gid flexbin --create-home flexbin \
    && mkdir -p /app/var && chown flexbin:flexbin /app/var

# ---- Python dependencies: the one install step --------------------------------------------
# The runtime dependencies of pyproject.toml (`[project] dependencies`; the test and bench
# extras stay out). The image runs the code from /app, so the project itself is not installed
# and this layer is rebuilt only when pyproject.toml changes.
# PyPI's torch wheel for linux/x86_64 is the CUDA build: workers use the GPU when one is reserved.
ARG WHEELHOUSE_URL=
COPY pyproject.toml tools/runtime_requirements.py /tmp/deps/
RUN python3 /tmp/deps/runtime_requirements.py /tmp/deps/pyproject.toml > /tmp/deps/runtime.txt \
    && pip install ${WHEELHOUSE_URL:+--no-index --find-links "$WHEELHOUSE_URL"} -r /tmp/deps/runtime.txt \
    && rm -rf /tmp/deps
# -------------------------------------------------------------------------------------------

WORKDIR /app
COPY alembic.ini ./
COPY migrations migrations
COPY core core
COPY service service
COPY worker worker
COPY api api
USER 10001:10001

# Inside the container's own network namespace the API listens on every interface.
ENV FLEXBIN_HOST=0.0.0.0
EXPOSE 8000
# Ready = database, broker and every deployed checkpoint loaded (`/readyz`, docs/service.md).
# The worker and migrate services of docker-compose.yml replace or disable this check.
HEALTHCHECK --interval=10s --timeout=6s --start-period=60s --retries=6 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('FLEXBIN_PORT', '8000'), timeout=5)"]
CMD ["python", "-m", "api.run"]
