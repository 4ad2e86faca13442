#!/bin/bash
# Creates each database named in POSTGRES_MULTIPLE_DATABASES ("syntho-core","syntho-backend"),
# owned by POSTGRES_USER. The postgres image runs this once, when it initialises its volume.
set -euo pipefail

IFS=',' read -r -a databases <<< "${POSTGRES_MULTIPLE_DATABASES:-}"
for db in "${databases[@]}"; do
    db="${db//\"/}"
    db="$(echo "$db" | tr -d '[:space:]')"
    [ -n "$db" ] || continue
    echo "creating database $db"
    psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
        -c "CREATE DATABASE \"$db\" OWNER \"$POSTGRES_USER\""
done
