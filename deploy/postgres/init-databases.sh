#!/bin/sh
# Creates one login role and one database per Ebb service (ebb_lifecycle, ebb_scheduler,
# ebb_notifier, ebb_audit), each database owned by its role and closed to every other role, so
# no service can read another's tables. Safe to run again: what exists is kept, and the
# roles' passwords are set to the given one each time.
#
# Environment: PGHOST, PGPORT, PGUSER, PGPASSWORD (a superuser or a role with CREATEROLE and
# CREATEDB) and EBB_DB_PASSWORD (the password of the four service roles).
set -eu
: "${EBB_DB_PASSWORD:?set EBB_DB_PASSWORD}"

for svc in lifecycle scheduler notifier audit; do
    psql -v ON_ERROR_STOP=1 -q -d postgres \
        --set=name="ebb_${svc}" --set=password="${EBB_DB_PASSWORD}" <<'SQL'
SELECT format('CREATE ROLE %I LOGIN', :'name')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'name') \gexec
SELECT format('ALTER ROLE %I WITH LOGIN PASSWORD %L', :'name', :'password') \gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'name', :'name')
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'name') \gexec
SELECT format('REVOKE ALL ON DATABASE %I FROM PUBLIC', :'name') \gexec
SQL
    echo "database ebb_${svc}: ready"
done
