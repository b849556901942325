#!/bin/sh
# The official postgres image's entrypoint, reduced to what FlexBin uses: on an empty $PGDATA,
# initdb with superuser $POSTGRES_USER (password $POSTGRES_PASSWORD, scram-sha-256 over TCP,
# trust on the local socket) and create $POSTGRES_DB; then run the command as user postgres.
# The server port comes from the command line or $PGPORT, which the client tools read too.
set -eu
if [ "$(id -u)" = 0 ]; then
  mkdir -p "$PGDATA" /var/run/postgresql
  chown -R postgres:postgres "$PGDATA" /var/run/postgresql
  chmod 700 "$PGDATA"
  exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  : "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}"
  user=${POSTGRES_USER:-postgres}
  pwfile=$(mktemp)
  printf '%s' "$POSTGRES_PASSWORD" > "$pwfile"
  initdb -D "$PGDATA" --username="$user" --pwfile="$pwfile" --auth-local=trust --auth-host=scram-sha-256
  rm -f "$pwfile"
  echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
  # a socket-only server for the set-up, as the official image does
  pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start
  if [ "${POSTGRES_DB:-$user}" != postgres ]; then
    createdb --username="$user" "${POSTGRES_DB:-$user}"
  fi
  pg_ctl -D "$PGDATA" -m fast -w stop
fi
exec "$@"
