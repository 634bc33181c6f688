#!/bin/sh
# docker-entrypoint-initdb.d (embedded deployment): a read-only role for Grafana. Default
# privileges in template1 and in the broker's database give it SELECT on the history tables and
# the Grafana view the broker creates later, in the default database and in every tenant's.
set -eu
psql -v ON_ERROR_STOP=1 -q -X -d postgres -v role="$GRAFANA_DB_USER" -v password="$GRAFANA_DB_PASSWORD" <<'SQL'
SELECT format('CREATE ROLE %I LOGIN PASSWORD %L', :'role', :'password') \gexec
SQL
for db in template1 "$POSTGRES_DB"; do
  psql -v ON_ERROR_STOP=1 -q -X -d "$db" -v role="$GRAFANA_DB_USER" -v owner="$POSTGRES_USER" <<'SQL'
SELECT format('ALTER DEFAULT PRIVILEGES FOR ROLE %I IN SCHEMA public GRANT SELECT ON TABLES TO %I', :'owner', :'role') \gexec
SELECT format('GRANT USAGE ON SCHEMA public TO %I', :'role') \gexec
SQL
done
