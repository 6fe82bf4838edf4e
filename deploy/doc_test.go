// Package deploy_test validates the deployment artifacts in deploy/ without
// a container runtime or a Kubernetes cluster, neither of which runs here:
//
//   - the Helm chart passes `helm lint`, and every object `helm template`
//     renders (with the defaults and with overrides) decodes strictly into
//     its official k8s.io/api type, unknown fields failing; then the
//     semantics: probes on the admin port, images, non-root pods, the NATS
//     cluster's routes, selectors that select, references that resolve;
//   - the NATS configurations (chart and compose) load in nats-server with
//     the accounts and permissions of deploy/nats/natter.conf;
//   - compose.yaml loads with compose-go (the loader of docker compose),
//     with the .env nkeys.sh writes, and its HAProxy config routes to it;
//   - every NATTER_* variable and config key names a real flag of the
//     edge or worker binary;
//   - every query of the Grafana dashboard (grafana/) parses with
//     Prometheus's PromQL parser and selects only metrics, labels and
//     label values a real edge's /metrics has;
//   - the Dockerfile's targets, user and ports.
//
// The helm binary must be on PATH or in $HOME/go/bin:
//
//	go install helm.sh/helm/v3/cmd/helm@v3.22.0
package deploy_test
