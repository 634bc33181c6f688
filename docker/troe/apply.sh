#!/bin/sh
# Applies the TRoE setup SQL (broker_config/sql/troe.sql, then troe_indexes.sql: the same SQL our
# broker runs) to Orion-LD's TRoE databases: `$TROE_DB_NAME` (default tenant) and every
# `$TROE_DB_NAME_<tenant>` Orion-LD creates on a tenant's first write. Both files are idempotent,
# so this pass repeats every $TROE_SETUP_INTERVAL_S seconds to reach new tenants.
# Also keeps a read-only role for Grafana ($GRAFANA_DB_USER) able to read the history.
set -eu
: "${TROE_DB_NAME:=orion}"
: "${TROE_SETUP_INTERVAL_S:=60}"
SQL_DIR=/troe/sql

psql_admin() { PGOPTIONS="-c client_min_messages=warning" psql -v ON_ERROR_STOP=1 -q -X "$@"; }

ensure_grafana_role() {
  psql_admin -d postgres -v role="$GRAFANA_DB_USER" -v password="$GRAFANA_DB_PASSWORD" <<'SQL'
SELECT format('CREATE ROLE %I LOGIN PASSWORD %L', :'role', :'password')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'role') \gexec
SELECT format('ALTER ROLE %I LOGIN PASSWORD %L', :'role', :'password') \gexec
SQL
}

apply_to() {
  db="$1"
  psql_admin -d "$db" -f "$SQL_DIR/troe.sql"
  psql_admin -d "$db" -f "$SQL_DIR/troe_indexes.sql"
  psql_admin -d "$db" -v role="$GRAFANA_DB_USER" <<'SQL'
SELECT format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), :'role') \gexec
SELECT format('GRANT USAGE ON SCHEMA public TO %I', :'role') \gexec
SELECT format('GRANT SELECT ON ALL TABLES IN SCHEMA public TO %I', :'role') \gexec
SQL
}

while true; do
  ensure_grafana_role
  databases=$(psql_admin -d postgres -At -v name="$TROE_DB_NAME" <<'SQL'
SELECT datname FROM pg_database
WHERE datname = :'name' OR datname LIKE :'name' || '\_%' ORDER BY datname;
SQL
)
  for db in $databases; do
    apply_to "$db"
  done
  if [ -n "$databases" ]; then
    touch /tmp/troe-applied
  fi
  echo "troe-setup: applied to:" ${databases:-"(no TRoE database yet)"}
  sleep "$TROE_SETUP_INTERVAL_S"
done
