//! The deployment of the billing service, as files beside this crate: `k8s/` (Kustomize bases
//! and overlays, `validate.py`), `docker/`, `openapi/` (`validate.py`), and the scripts that run
//! the stack on one machine (`dev-deps.sh`, `run-all.sh`, `stop-all.sh`, `bench.sh`). The crate
//! holds no code and no module; its tests (`tests/manifests.rs`) check the manifests against the
//! Kubernetes schemas and the services' settings.
