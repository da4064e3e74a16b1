#!/usr/bin/env bash
# Make sure the local PostgreSQL (127.0.0.1:5432) answers; start the cluster if it is down.
# Used by `make test`: the integration tests run every queue test on SQLite and PostgreSQL.
set -euo pipefail

ready() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }

ready && exit 0
if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    echo "ensure-postgres.sh: error: PostgreSQL is not answering on 127.0.0.1:5432 and" \
        "pg_ctlcluster is not installed (apt-get install postgresql)" >&2
    exit 1
fi
version=$(ls /etc/postgresql | sort -V | tail -n 1)
pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
for _ in $(seq 30); do
    ready && exit 0
    sleep 1
done
echo "ensure-postgres.sh: error: PostgreSQL did not start on 127.0.0.1:5432" >&2
exit 1
