#!/usr/bin/env bash
# Regenerates docs/dashboards/{overview,finetunejob}.png (`make screenshots`): brings the local kubetune up if it is
# not (`make up`), runs the two-worker example there under the name dashboard-demo (8 epochs, so Prometheus sees it
# train), and renders both Grafana dashboards from that Prometheus over the job's run (hack/render_dashboards.py).
set -euo pipefail
cd "$(dirname "$0")/.."
state="${KUBETUNE_CLUSTER_DIR:-$HOME/.cache/kubetune/cluster}"
prometheus="http://127.0.0.1:$(( ${KUBETUNE_CLUSTER_PORT:-16443} + 5 ))"
name=dashboard-demo
[ -f "$state/ready" ] || make -s up
# shellcheck disable=SC1091
source "$state/env"
kubectl delete ftj "$name" --ignore-not-found --wait >/dev/null
sed -e "s/two-workers-lora/$name/" -e 's/epochs: 2$/epochs: 8/' examples/two-workers-cpu.yaml | kubectl apply -f -
start="$(date +%s)"
kubectl wait --for=condition=Succeeded "ftj/$name" --timeout=900s
sleep 20  # the last scrapes (every 5 s) and the alert rules' evaluation
.venv/bin/python hack/render_dashboards.py --prometheus "$prometheus" --finetunejob "$name" \
  --start "$((start - 30))" --end "$(date +%s)" --out docs/dashboards
