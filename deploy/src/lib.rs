//! The deployment of the billing service, as files beside this crate: `k8s/` (Kustomize bases
//! and overlays), `docker/`, `openapi/`, and the scripts that run the stack on one machine
//! (`dev-deps.sh`, `run-all.sh`, `bench.sh`). The crate holds no code; its tests
//! (`tests/manifests.rs`) check that the manifests agree with the services' settings.
