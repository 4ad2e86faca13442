#!/usr/bin/env bash
# The main job on one machine: a Ray head, a worker and the Syntho app, each started by the
# zipapp exactly as on its own VM, from the locally built images (stand-ins for the Syntho
# images). Run by `make demo`, which builds the zipapp and the images first.
set -euo pipefail
cd "$(dirname "$0")/.."

AGENT=${AGENT:-dist/syntho-agent}
DATA=${DEMO_DATA:-/var/lib/syntho-agent-demo}
# What this host allows (the product's default, 65536, where the host permits it).
NOFILE=$(( $(ulimit -Hn) < 65536 ? $(ulimit -Hn) : 65536 ))
eval "$(.venv/bin/python tests/images/build.py --list | .venv/bin/python -c '
import json, sys
for name, ref in json.load(sys.stdin).items():
    print(f"IMG_{name.upper()}={ref}")')"

echo "== head (host network, as on its VM)"
"$AGENT" head --data-dir "$DATA/head" --ray-image "$IMG_RAY" --gcs-redis-image "$IMG_REDIS" \
    --nofile "$NOFILE"
HEAD_IP=$(SYNTHO_AGENT_TOKEN=$(cat "$DATA/head/ray-token") .venv/bin/python -c '
import os
from agent.cluster import alive_nodes
print(next(n["node_ip"] for n in alive_nodes("127.0.0.1", os.environ["SYNTHO_AGENT_TOKEN"])
           if n.get("is_head_node")))')

echo "== worker (beside the head on this host's network, its own ports, joining $HEAD_IP)"
# Host networking, as on a VM: the head's Ray speaks TLS (a new cluster's default), and a
# node's certificate must name the address it is dialled at (docs/security.md).
"$AGENT" worker --head "$HEAD_IP" --data-dir "$DATA/worker" --instance demo \
    --token-file "$DATA/head/ray-token" --ray-image "$IMG_RAY" \
    --shm-size 1gb --nofile "$NOFILE"

echo "== app (beside the head, as on a one-VM deployment)"
"$AGENT" app --head 127.0.0.1 --data-dir "$DATA/head" \
    --core-image "$IMG_CORE" --backend-image "$IMG_BACKEND" --frontend-image "$IMG_FRONTEND" \
    --postgres-image "$IMG_POSTGRES" --redis-image "$IMG_REDIS"

echo
"$AGENT" status --data-dir "$DATA/head" || true
cat <<EOT

The Syntho app answers at http://localhost:3000/ (the backend at http://localhost:8000/api/docs/).
Run \`make demo\` again: it converges and changes nothing. To stop it:
  $AGENT down --data-dir $DATA/head && $AGENT down --data-dir $DATA/worker --instance demo
(add --purge --yes to both to also remove the database volume and the generated secrets)
EOT
