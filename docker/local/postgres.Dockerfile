# A stand-in for the official postgres image, from Debian's PostgreSQL (15 on bookworm; the
# official image in docker-compose.yml is 16): the same POSTGRES_USER / POSTGRES_PASSWORD /
# POSTGRES_DB variables, the same data folder and first-start initialisation, so the compose
# file works with either. Used only where no registry can be reached (tools/compose_check.sh).
ARG DEBIAN_IMAGE=flexbin-local/debian:bookworm
FROM ${DEBIAN_IMAGE}
# Debian stable pins the major versions; its point releases are security fixes to take.
# No Debian "main" cluster: the entrypoint creates the one in $PGDATA, as the official image does
# hadolint ignore=DL3008
RUN mkdir -p /etc/postgresql-common/createcluster.d \
    && echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.d/no-main-cluster.conf \
    && apt-get update \
    && apt-get install -y --no-install-recommends postgresql-15 \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /var/lib/postgresql/data /var/run/postgresql \
    && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data
COPY postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
VOLUME /var/lib/postgresql/data
ENTRYPOINT ["docker-entrypoint.sh"]
# fast shutdown, as the official image
STOPSIGNAL SIGINT
EXPOSE 5432
CMD ["postgres"]
