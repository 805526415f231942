#!/bin/sh
# PostgreSQL 15 for the coordinator (docs/operations.md, "PostgreSQL"): a login role and a
# database it owns. Safe to run again (nothing is changed when both exist). Run it as the
# database superuser on the database host:
#   sudo -u postgres deploy/central/postgres-setup.sh [ROLE] [DATABASE]     (default siaga_central siaga)
# then give the role a password (sudo -u postgres psql -c '\password siaga_central'), put it in
# the coordinator's ~/.pgpass, and set store.url: postgresql://siaga_central@HOST:5432/siaga.
# libpq's PGHOST/PGPORT/PGUSER choose the server, as for psql.
set -eu
ROLE="${1:-siaga_central}" DB="${2:-siaga}"
case "$ROLE$DB" in *[!a-z0-9_]*) echo "postgres-setup: role and database: lower-case letters, digits, _ only" >&2; exit 2 ;; esac
psql -X -q -v ON_ERROR_STOP=1 -d postgres <<SQL
SELECT format('CREATE ROLE %I LOGIN', '$ROLE') WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$ROLE')
\gexec
SELECT format('CREATE DATABASE %I OWNER %I', '$DB', '$ROLE') WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = '$DB')
\gexec
SQL
# The coordinator creates its tables at start, in its own database; nobody else may connect.
psql -X -q -v ON_ERROR_STOP=1 -d postgres -c "REVOKE CONNECT, TEMPORARY ON DATABASE \"$DB\" FROM PUBLIC"
echo "postgres-setup: role $ROLE, database $DB ready"
