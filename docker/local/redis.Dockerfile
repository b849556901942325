# A stand-in for the official redis:7 image, from Debian's redis-server (7.0 on bookworm):
# same data folder (/data, the working directory, so AOF files land there), same command name.
# Used only where no registry can be reached (tools/compose_check.sh).
ARG DEBIAN_IMAGE=flexbin-local/debian:bookworm
FROM ${DEBIAN_IMAGE}
# Debian stable pins the major versions; its point releases are security fixes to take.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends redis-server redis-tools \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir /data && chown redis:redis /data
VOLUME /data
WORKDIR /data
# the redis user of the Debian package (its uid is assigned at install)
# hadolint ignore=DL3066
USER redis
EXPOSE 6379
CMD ["redis-server"]
