# A stand-in for the official python:3.11-slim, built from Debian packages on the locally
# imported Debian base (tools/compose_check.sh): used only where no registry can be reached.
# Debian's python3 is 3.11 on bookworm; the FlexBin Dockerfile installs into a virtualenv, so
# this needs no `pip` of its own.
ARG DEBIAN_IMAGE=flexbin-local/debian:bookworm
FROM ${DEBIAN_IMAGE}
# Debian stable pins the major versions; its point releases are security fixes to take.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*
CMD ["python3"]
