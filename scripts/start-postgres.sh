#!/usr/bin/env bash
# Install (from Debian's packages) and start a local PostgreSQL for the store tests, then print its URL.
# Idempotent: safe to run when PostgreSQL is already installed, running, or configured.
set -euo pipefail

if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  echo "Installing PostgreSQL from Debian packages..." >&2
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
fi

version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
if ! pg_lsclusters -h | awk -v v="$version" '$1 == v && $2 == "main"' | grep -q .; then
  pg_createcluster "$version" main >&2
fi
if ! pg_lsclusters -h | awk -v v="$version" '$1 == v && $2 == "main" && $4 == "online"' | grep -q .; then
  pg_ctlcluster "$version" main start >&2
fi

for _ in $(seq 1 30); do
  su postgres -c "psql -qAtc 'select 1'" >/dev/null 2>&1 && break
  sleep 1
done

su postgres -c "psql -qAtc \"select 1 from pg_roles where rolname = 'neoleads'\"" | grep -q 1 ||
  su postgres -c "psql -qc \"create role neoleads login createdb password 'neoleads'\"" >&2
su postgres -c "psql -qAtc \"select 1 from pg_database where datname = 'neoleads_test'\"" | grep -q 1 ||
  su postgres -c "createdb -O neoleads neoleads_test" >&2

echo "postgresql+psycopg://neoleads:neoleads@127.0.0.1:5432/neoleads_test"
