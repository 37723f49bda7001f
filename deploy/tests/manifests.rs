//! The Kubernetes manifests in `deploy/k8s` agree with the code.
//!
//! `deploy/k8s/validate.py` renders every overlay with `kubectl kustomize`, validates each
//! document against the Kubernetes schemas (strict) and writes them as JSON; these tests read
//! that JSON and check, overlay by overlay, that every container's mounted configuration and
//! environment load exactly as the services load them (`Settings::load_files`), and that ports,
//! probes, Services, autoscalers, disruption budgets and network policies fit those settings.
//!
//! They need kubectl and the virtualenv with kubernetes-validate; `deploy/dev-deps.sh` installs
//! both. Without them the tests fail (they never skip).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
};

use base64::Engine as _;
use serde_json::Value;
use shared::{
    config::{Scope, Service, Settings},
    endpoints::{LIVENESS, READINESS},
};

/// The overlays every deployment has; any other overlay directory is checked too.
const REQUIRED_OVERLAYS: [&str; 2] = ["dev", "prod"];
/// The three services, each a Deployment and a Service of that name.
const SERVICES: [&str; 3] = ["command-svc", "query-svc", "scheduler-svc"];
/// What secrets.yaml holds instead of real values: nothing real is ever committed.
const PLACEHOLDER: &str = "REPLACE_ME";

// --- rendering --------------------------------------------------------------------------------

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The virtualenv's python, found the way deploy/dev-deps.sh makes it: `$BILLING_DEPS_VENV`, else
/// `${XDG_CACHE_HOME:-$HOME/.cache}/billing-service/venv`.
fn venv_python() -> PathBuf {
    let non_empty = |name: &str| std::env::var_os(name).filter(|value| !value.is_empty());
    let venv = match non_empty("BILLING_DEPS_VENV") {
        Some(dir) => PathBuf::from(dir),
        None => non_empty("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(non_empty("HOME").unwrap_or_else(|| "/tmp".into())).join(".cache")
            })
            .join("billing-service/venv"),
    };
    venv.join("bin/python")
}

/// A directory of this test's own under the system's temp dir, removed when dropped (also when
/// a check panics). The `billing-test-` prefix lets `deploy/dev-deps.sh --clean-test-databases`
/// remove one that a killed run left behind.
struct TempDir(PathBuf);

impl TempDir {
    fn new(purpose: &str) -> TempDir {
        static CREATED: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_nanos());
        let dir = std::env::temp_dir().join(format!(
            "billing-test-{purpose}-{}-{nanos}-{}",
            std::process::id(),
            CREATED.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        TempDir(dir)
    }

    fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Every overlay, rendered and validated by deploy/k8s/validate.py (once per process).
fn overlays() -> &'static [Overlay] {
    static RENDERED: OnceLock<Vec<Overlay>> = OnceLock::new();
    RENDERED.get_or_init(render_overlays)
}

fn render_overlays() -> Vec<Overlay> {
    let python = venv_python();
    assert!(
        python.exists(),
        "no virtualenv with kubernetes-validate at {}: run deploy/dev-deps.sh",
        python.display()
    );
    let kubectl = std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".to_owned());
    let kubectl_runs = Command::new(&kubectl)
        .args(["version", "--client"])
        .output()
        .is_ok_and(|output| output.status.success());
    assert!(
        kubectl_runs,
        "`{kubectl}` does not run: run deploy/dev-deps.sh"
    );

    let overlays_dir = workspace_root().join("deploy/k8s/overlays");
    let mut names: Vec<String> = std::fs::read_dir(&overlays_dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", overlays_dir.display()))
        .map(|entry| entry.expect("a directory entry"))
        .filter(|entry| entry.path().is_dir())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for required in REQUIRED_OVERLAYS {
        assert!(
            names.iter().any(|name| name == required),
            "overlay {required} missing in {}",
            overlays_dir.display()
        );
    }

    let out = TempDir::new("deploy-manifests");
    let output = Command::new(&python)
        .arg(workspace_root().join("deploy/k8s/validate.py"))
        .arg("--out")
        .arg(&out.0)
        .args(names.iter().map(|name| overlays_dir.join(name)))
        .env("KUBECTL", &kubectl)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    assert!(
        output.status.success(),
        "deploy/k8s/validate.py failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    names
        .into_iter()
        .map(|name| {
            let path = out.join(format!("{name}.json"));
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
            let docs: Vec<Value> = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{} is not a JSON list: {e}", path.display()));
            Overlay { name, docs }
        })
        .collect()
}

// --- reading the rendered documents ------------------------------------------------------------

/// The items of a JSON list; none when the field is absent.
fn list(value: &Value) -> &[Value] {
    value.as_array().map_or(&[], Vec::as_slice)
}

fn text<'a>(value: &'a Value, what: &str) -> &'a str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {value}"))
}

fn name_of(doc: &Value) -> &str {
    text(&doc["metadata"]["name"], "metadata.name")
}

fn string_map(value: &Value) -> BTreeMap<String, String> {
    value
        .as_object()
        .map(|map| {
            map.iter()
                .map(|(k, v)| (k.clone(), text(v, k).to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether a plain label map (a Service's selector) matches `labels`; an empty one matches
/// nothing here, since a Service without a selector has no pods to send to.
fn map_selects(selector: &Value, labels: &BTreeMap<String, String>) -> bool {
    let selector = string_map(selector);
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Whether a LabelSelector (matchLabels, matchExpressions) selects `labels`; `{}` selects all.
fn selects(selector: &Value, labels: &BTreeMap<String, String>) -> bool {
    let by_labels = string_map(&selector["matchLabels"])
        .iter()
        .all(|(k, v)| labels.get(k) == Some(v));
    let by_expressions = list(&selector["matchExpressions"]).iter().all(|expr| {
        let key = text(&expr["key"], "matchExpressions.key");
        let values: Vec<&str> = list(&expr["values"])
            .iter()
            .map(|v| text(v, "values"))
            .collect();
        let value = labels.get(key).map(String::as_str);
        match text(&expr["operator"], "operator") {
            "In" => value.is_some_and(|v| values.contains(&v)),
            "NotIn" => !value.is_some_and(|v| values.contains(&v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            other => panic!("unknown selector operator {other}"),
        }
    });
    by_labels && by_expressions
}

struct Overlay {
    name: String,
    docs: Vec<Value>,
}

impl Overlay {
    fn all<'a>(&'a self, kind: &str) -> impl Iterator<Item = &'a Value> + use<'a> {
        let kind = kind.to_owned();
        self.docs
            .iter()
            .filter(move |doc| doc["kind"] == kind.as_str())
    }

    fn find(&self, kind: &str, name: &str) -> Option<&Value> {
        self.all(kind).find(|doc| name_of(doc) == name)
    }

    fn get(&self, kind: &str, name: &str) -> &Value {
        self.find(kind, name)
            .unwrap_or_else(|| panic!("{}: no {kind} named {name}", self.name))
    }

    /// The namespace everything is deployed to.
    fn namespace(&self) -> &str {
        self.get("Deployment", "command-svc")["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
    }

    /// The labels of this overlay's namespace, as a namespaceSelector sees them.
    fn namespace_labels(&self) -> BTreeMap<String, String> {
        let mut labels = self
            .find("Namespace", self.namespace())
            .map(|ns| string_map(&ns["metadata"]["labels"]))
            .unwrap_or_default();
        labels.insert(
            "kubernetes.io/metadata.name".to_owned(),
            self.namespace().to_owned(),
        );
        labels
    }

    /// The Deployments and Jobs: everything that runs pods.
    fn workloads(&self) -> Vec<Workload<'_>> {
        self.docs
            .iter()
            .filter(|doc| doc["kind"] == "Deployment" || doc["kind"] == "Job")
            .map(|doc| Workload { overlay: self, doc })
            .collect()
    }

    fn deployment(&self, name: &str) -> Workload<'_> {
        Workload {
            overlay: self,
            doc: self.get("Deployment", name),
        }
    }

    /// The workloads whose pods `selector` (a LabelSelector) selects.
    fn selected_by(&self, selector: &Value) -> Vec<Workload<'_>> {
        self.workloads()
            .into_iter()
            .filter(|w| selects(selector, &w.labels()))
            .collect()
    }

    fn migration_job(&self) -> Workload<'_> {
        self.workloads()
            .into_iter()
            .find(|w| {
                w.kind() == "Job"
                    && w.containers().iter().any(|c| {
                        billingctl_command(c).first().map(String::as_str) == Some("migrate")
                    })
            })
            .unwrap_or_else(|| panic!("{}: no Job runs `billingctl ... migrate`", self.name))
    }

    /// A value of a Secret, decoded.
    fn secret_value(&self, secret: &str, key: &str) -> String {
        let doc = self.get("Secret", secret);
        if let Some(value) = doc["stringData"][key].as_str() {
            return value.to_owned();
        }
        let encoded: String = doc["data"][key]
            .as_str()
            .unwrap_or_else(|| panic!("{}: Secret {secret} has no key {key}", self.name))
            .split_whitespace()
            .collect();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap_or_else(|e| panic!("{}: Secret {secret}/{key} is not base64: {e}", self.name));
        String::from_utf8(bytes).expect("a UTF-8 secret")
    }

    fn config_map_value(&self, config_map: &str, key: &str) -> String {
        self.get("ConfigMap", config_map)["data"][key]
            .as_str()
            .unwrap_or_else(|| panic!("{}: ConfigMap {config_map} has no key {key}", self.name))
            .to_owned()
    }
}

#[derive(Clone, Copy)]
struct Workload<'a> {
    overlay: &'a Overlay,
    doc: &'a Value,
}

impl<'a> Workload<'a> {
    fn kind(&self) -> &'a str {
        text(&self.doc["kind"], "kind")
    }

    fn name(&self) -> &'a str {
        name_of(self.doc)
    }

    /// `prod: Deployment/command-svc`, for messages.
    fn describe(&self) -> String {
        format!("{}: {}/{}", self.overlay.name, self.kind(), self.name())
    }

    fn pod_spec(&self) -> &'a Value {
        &self.doc["spec"]["template"]["spec"]
    }

    fn labels(&self) -> BTreeMap<String, String> {
        string_map(&self.doc["spec"]["template"]["metadata"]["labels"])
    }

    fn containers(&self) -> Vec<&'a Value> {
        let spec = self.pod_spec();
        list(&spec["initContainers"])
            .iter()
            .chain(list(&spec["containers"]))
            .collect()
    }

    /// The container named after its Deployment: the service itself.
    fn main_container(&self) -> &'a Value {
        self.containers()
            .into_iter()
            .find(|c| c["name"] == self.name())
            .unwrap_or_else(|| panic!("{}: no container named {}", self.describe(), self.name()))
    }

    /// The container port a probe, Service or policy names, by name or by number.
    fn container_port(&self, port: &Value) -> Option<(String, i64)> {
        self.containers()
            .iter()
            .flat_map(|c| list(&c["ports"]))
            .find(|p| match port {
                Value::String(name) => p["name"] == name.as_str(),
                Value::Number(number) => p["containerPort"].as_i64() == number.as_i64(),
                _ => false,
            })
            .map(|p| {
                let name = p["name"].as_str().unwrap_or_default().to_owned();
                (name, p["containerPort"].as_i64().expect("a containerPort"))
            })
    }

    /// The settings `container` starts with: the files its arguments name, as mounted, and its
    /// environment, loaded as the service loads them.
    fn settings(&self, container: &Value) -> Settings {
        let argv: Vec<String> = list(&container["command"])
            .iter()
            .chain(list(&container["args"]))
            .map(|arg| text(arg, "an argument").to_owned())
            .collect();
        let flags = ["-conf", "--conf", "--config"];
        assert!(
            argv.iter()
                .any(|arg| flags.contains(&arg.as_str()) || arg.starts_with("--config=")),
            "{} container {}: started without -conf/--config, it would look for {}",
            self.describe(),
            container["name"],
            shared::config::DEFAULT_CONFIG_PATH
        );
        let dir = TempDir::new("deploy-settings");
        let files: Vec<PathBuf> =
            Settings::paths_from_args(std::iter::once("program".to_owned()).chain(argv))
                .iter()
                .enumerate()
                .map(|(i, path)| {
                    let file = dir.join(format!("{i}.yaml"));
                    std::fs::write(&file, self.mounted_file(container, path))
                        .expect("a temporary file");
                    file
                })
                .collect();
        Settings::load_files(&files, Some(self.settings_env(container))).unwrap_or_else(|e| {
            panic!(
                "{} container {}: its configuration files and BILLING__ variables do not load: {e}",
                self.describe(),
                container["name"]
            )
        })
    }

    /// The content of the file at `path` in `container`: a ConfigMap or Secret key mounted
    /// there, as a file (subPath) or inside a mounted directory.
    fn mounted_file(&self, container: &Value, path: &str) -> String {
        for mount in list(&container["volumeMounts"]) {
            let mount_path = text(&mount["mountPath"], "mountPath");
            let file_in_volume = match mount["subPath"].as_str() {
                Some(sub_path) if path == mount_path => sub_path.to_owned(),
                Some(_) => continue,
                None => match path
                    .strip_prefix(mount_path)
                    .and_then(|rest| rest.strip_prefix('/'))
                {
                    Some(rest) => rest.to_owned(),
                    None => continue,
                },
            };
            let volume_name = text(&mount["name"], "volumeMounts.name");
            let volume = list(&self.pod_spec()["volumes"])
                .iter()
                .find(|v| v["name"] == volume_name)
                .unwrap_or_else(|| panic!("{}: no volume {volume_name}", self.describe()));
            return self.volume_file(volume, &file_in_volume);
        }
        panic!(
            "{} container {}: nothing is mounted at {path}",
            self.describe(),
            container["name"]
        )
    }

    fn volume_file(&self, volume: &Value, file: &str) -> String {
        // With `items`, only the listed keys are files, at their paths.
        let key_of = |source: &Value| -> String {
            if source["items"].is_array() {
                let item = list(&source["items"])
                    .iter()
                    .find(|item| item["path"] == file)
                    .unwrap_or_else(|| {
                        panic!(
                            "{}: volume {} has no file {file}",
                            self.describe(),
                            volume["name"]
                        )
                    });
                text(&item["key"], "items.key").to_owned()
            } else {
                file.to_owned()
            }
        };
        if volume["configMap"].is_object() {
            let source = &volume["configMap"];
            let name = text(&source["name"], "configMap.name");
            self.overlay.config_map_value(name, &key_of(source))
        } else if volume["secret"].is_object() {
            let source = &volume["secret"];
            let name = text(&source["secretName"], "secret.secretName");
            self.overlay.secret_value(name, &key_of(source))
        } else {
            panic!(
                "{}: volume {} is neither a ConfigMap nor a Secret",
                self.describe(),
                volume["name"]
            )
        }
    }

    /// The container's `BILLING__` variables with their values (Secret and ConfigMap references
    /// resolved), the environment the settings are loaded with.
    fn settings_env(&self, container: &Value) -> HashMap<String, String> {
        let describe = || format!("{} container {}", self.describe(), container["name"]);
        assert!(
            container["envFrom"].is_null(),
            "{}: envFrom is not checked by this test; name each BILLING__ variable",
            describe()
        );
        let mut env = HashMap::new();
        for var in list(&container["env"]) {
            let name = text(&var["name"], "env.name");
            if !name.starts_with("BILLING") {
                continue;
            }
            assert!(
                name.starts_with("BILLING__"),
                "{}: {name} is not read by the services (BILLING__ + the key path)",
                describe()
            );
            let from = &var["valueFrom"];
            let value = if let Some(value) = var["value"].as_str() {
                value.to_owned()
            } else if from["secretKeyRef"].is_object() {
                let reference = &from["secretKeyRef"];
                self.overlay.secret_value(
                    text(&reference["name"], "secretKeyRef.name"),
                    text(&reference["key"], "secretKeyRef.key"),
                )
            } else if from["configMapKeyRef"].is_object() {
                let reference = &from["configMapKeyRef"];
                self.overlay.config_map_value(
                    text(&reference["name"], "configMapKeyRef.name"),
                    text(&reference["key"], "configMapKeyRef.key"),
                )
            } else {
                panic!(
                    "{}: {name} has a value this test cannot resolve",
                    describe()
                )
            };
            env.insert(name.to_owned(), value);
        }
        env
    }
}

/// The billingctl subcommand and its arguments: the arguments without the configuration files.
fn billingctl_command(container: &Value) -> Vec<String> {
    let mut rest = Vec::new();
    let mut args = list(&container["args"])
        .iter()
        .map(|a| text(a, "an argument"));
    while let Some(arg) = args.next() {
        match arg {
            "--config" | "--conf" | "-conf" => {
                args.next();
            }
            _ if arg.starts_with("--config=") => {}
            _ => rest.push(arg.to_owned()),
        }
    }
    rest
}

/// The port an address such as `0.0.0.0:8080` binds, which must be every IPv4 interface.
fn bound_port(addr: &str, what: &str) -> i64 {
    let parsed: SocketAddr = addr
        .parse()
        .unwrap_or_else(|e| panic!("{what} = {addr} is not an address: {e}"));
    assert_eq!(
        parsed.ip(),
        Ipv4Addr::UNSPECIFIED,
        "{what} = {addr} must bind 0.0.0.0 in a pod, or nothing outside the pod reaches it"
    );
    i64::from(parsed.port())
}

/// The ports a service's container must declare, by name, from its settings.
fn expected_ports(workload: &Workload, settings: &Settings) -> BTreeMap<String, i64> {
    let ports: Vec<(&str, &str, &str)> = match (workload.kind(), workload.name()) {
        ("Deployment", "command-svc") => vec![
            ("grpc", "command.grpc_addr", &settings.command.grpc_addr),
            ("http", "command.http_addr", &settings.command.http_addr),
        ],
        ("Deployment", "query-svc") => vec![("http", "query.http_addr", &settings.query.http_addr)],
        ("Deployment", "scheduler-svc") => {
            vec![("http", "scheduler.http_addr", &settings.scheduler.http_addr)]
        }
        ("Job", _) => vec![],
        _ => panic!(
            "{}: a workload this test does not know; teach it the ports",
            workload.describe()
        ),
    };
    ports
        .into_iter()
        .map(|(name, key, addr)| (name.to_owned(), bound_port(addr, key)))
        .collect()
}

fn declared_ports(container: &Value) -> BTreeMap<String, i64> {
    list(&container["ports"])
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or("(unnamed)").to_owned(),
                p["containerPort"].as_i64().expect("a containerPort"),
            )
        })
        .collect()
}

/// CPU in millicores or memory in bytes, from a Kubernetes quantity such as `500m` or `1Gi`.
fn quantity(value: &Value, what: &str) -> f64 {
    let raw = match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => panic!("{what} is missing"),
    };
    let units = [
        ("Ki", 1024f64),
        ("Mi", 1024f64.powi(2)),
        ("Gi", 1024f64.powi(3)),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("m", 1e-3),
    ];
    let (number, factor) = units
        .iter()
        .find_map(|(suffix, factor)| raw.strip_suffix(suffix).map(|n| (n, *factor)))
        .unwrap_or((raw.as_str(), 1.0));
    number
        .parse::<f64>()
        .unwrap_or_else(|e| panic!("{what} = {raw} is not a quantity: {e}"))
        * factor
}

// --- the checks -------------------------------------------------------------------------------

#[test]
fn every_overlay_has_the_services_and_the_migration_job_in_one_namespace() {
    for overlay in overlays() {
        for service in SERVICES {
            overlay.get("Deployment", service);
            overlay.get("Service", service);
        }
        overlay.migration_job();
        let namespaced: BTreeSet<&str> = overlay
            .docs
            .iter()
            .filter(|doc| doc["kind"] != "Namespace")
            .map(|doc| doc["metadata"]["namespace"].as_str().unwrap_or("(none)"))
            .collect();
        assert_eq!(
            namespaced.len(),
            1,
            "{}: everything belongs in one namespace, not {namespaced:?}",
            overlay.name
        );
    }
}

/// Every caller has a token of its own, and query-svc presents one of scope `orders`.
fn assert_callers_fit_together(what: &str, settings: &Settings) {
    let tokens: Vec<&str> = settings
        .auth
        .callers
        .iter()
        .map(|c| c.token.expose())
        .collect();
    let distinct: BTreeSet<&str> = tokens.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        tokens.len(),
        "{what}: two callers share a token"
    );
    let command_token = settings.query.command_token.expose();
    let orders_caller = settings
        .auth
        .callers
        .iter()
        .find(|c| c.token.expose() == command_token);
    assert!(
        orders_caller.is_some_and(|c| c.scopes.contains(&Scope::Orders)),
        "{what}: query.command_token is no caller's token with scope orders"
    );
}

/// The repository holds placeholders only, never a real secret.
fn assert_secrets_are_placeholders(what: &str, settings: &Settings) {
    let mut secrets = vec![
        ("database.url", settings.database.url.expose()),
        ("redis.url", settings.redis.url.expose()),
        ("query.command_token", settings.query.command_token.expose()),
        ("auth.jwt_secret", settings.auth.jwt_secret.expose()),
        (
            "payment.webhook_secret",
            settings.payment.webhook_secret.expose(),
        ),
    ];
    for caller in &settings.auth.callers {
        secrets.push(("a token of auth.callers", caller.token.expose()));
    }
    for (key, value) in secrets {
        assert!(
            value.contains(PLACEHOLDER),
            "{what}: {key} must be a {PLACEHOLDER} placeholder in the repository"
        );
    }
    // And no service starts with them: a placeholder left in place stops the deployment.
    assert!(!settings.dev_mode, "{what}: dev_mode in a deployment");
    for service in [Service::Command, Service::Query] {
        assert!(
            settings.check_for(service).is_err(),
            "{what}: {service:?} would start with the placeholders"
        );
    }
}

#[test]
fn every_container_loads_its_configuration_as_the_service_does() {
    for overlay in overlays() {
        for workload in overlay.workloads() {
            for container in workload.containers() {
                // Panics, naming the container, when the files or variables do not load.
                let settings = workload.settings(container);
                let what = format!("{} container {}", workload.describe(), container["name"]);
                assert_callers_fit_together(&what, &settings);
                assert_secrets_are_placeholders(&what, &settings);
            }
        }
    }
}

#[test]
fn container_ports_are_the_configured_addresses_on_every_interface() {
    for overlay in overlays() {
        for workload in overlay.workloads() {
            for container in workload.containers() {
                let settings = workload.settings(container);
                let expected =
                    if workload.kind() == "Deployment" && container["name"] != workload.name() {
                        BTreeMap::new()
                    } else {
                        expected_ports(&workload, &settings)
                    };
                assert_eq!(
                    declared_ports(container),
                    expected,
                    "{} container {}: containerPorts differ from the configured addresses",
                    workload.describe(),
                    container["name"]
                );
            }
        }
    }
}

#[test]
fn probes_ask_the_service_endpoints_on_the_http_port() {
    for overlay in overlays() {
        for service in SERVICES {
            let workload = overlay.deployment(service);
            let container = workload.main_container();
            let http_port = expected_ports(&workload, &workload.settings(container))["http"];
            for (probe, path) in [
                ("readinessProbe", READINESS),
                ("livenessProbe", LIVENESS),
                ("startupProbe", LIVENESS),
            ] {
                let get = &container[probe]["httpGet"];
                assert!(
                    get.is_object() || (probe == "startupProbe" && container[probe].is_null()),
                    "{}: {probe} must be an httpGet",
                    workload.describe()
                );
                if get.is_null() {
                    continue;
                }
                assert_eq!(get["path"], path, "{}: {probe} path", workload.describe());
                assert_eq!(
                    workload
                        .container_port(&get["port"])
                        .map(|(_, number)| number),
                    Some(http_port),
                    "{}: {probe} must ask the http port {http_port}",
                    workload.describe()
                );
            }
        }
    }
}

#[test]
fn termination_grace_covers_the_pre_stop_sleep_and_the_shutdown_grace() {
    for overlay in overlays() {
        for service in SERVICES {
            let workload = overlay.deployment(service);
            let container = workload.main_container();
            let settings = workload.settings(container);
            let pre_stop_secs = container["lifecycle"]["preStop"]["sleep"]["seconds"]
                .as_i64()
                .unwrap_or_else(|| {
                    panic!(
                        "{}: a preStop sleep lets endpoints go before SIGTERM",
                        workload.describe()
                    )
                });
            assert!(
                pre_stop_secs > 0,
                "{}: preStop sleep of 0 s",
                workload.describe()
            );
            let grace_secs = workload.pod_spec()["terminationGracePeriodSeconds"]
                .as_i64()
                .unwrap_or(30);
            let needed_ms = pre_stop_secs * 1000
                + i64::try_from(settings.command.shutdown_grace_ms).expect("a sane grace");
            assert!(
                grace_secs * 1000 > needed_ms,
                "{}: terminationGracePeriodSeconds {grace_secs} s must exceed the preStop sleep \
                 plus command.shutdown_grace_ms ({needed_ms} ms)",
                workload.describe()
            );
        }
    }
}

#[test]
fn services_select_one_deployment_and_target_its_ports() {
    for overlay in overlays() {
        for service in overlay.all("Service") {
            let name = name_of(service);
            let selected: Vec<Workload> = overlay
                .workloads()
                .into_iter()
                .filter(|w| map_selects(&service["spec"]["selector"], &w.labels()))
                .collect();
            let [workload] = selected.as_slice() else {
                panic!(
                    "{}: Service {name} selects {} workloads, not one Deployment",
                    overlay.name,
                    selected.len()
                );
            };
            assert_eq!(
                workload.kind(),
                "Deployment",
                "{}: Service {name}",
                overlay.name
            );
            let mut exposed = BTreeSet::new();
            for port in list(&service["spec"]["ports"]) {
                let target = if port["targetPort"].is_null() {
                    &port["port"]
                } else {
                    &port["targetPort"]
                };
                let (port_name, _) = workload.container_port(target).unwrap_or_else(|| {
                    panic!(
                        "{}: Service {name} targets port {target}, which {} does not declare",
                        overlay.name,
                        workload.describe()
                    )
                });
                exposed.insert(port_name);
            }
            let declared: BTreeSet<String> = declared_ports(workload.main_container())
                .into_keys()
                .collect();
            assert_eq!(
                exposed,
                declared,
                "{}: Service {name} exposes other ports than {} declares",
                overlay.name,
                workload.describe()
            );
        }
    }
}

#[test]
fn query_svc_reaches_command_svc_through_its_service() {
    for overlay in overlays() {
        let query = overlay.deployment("query-svc");
        let endpoint = query
            .settings(query.main_container())
            .query
            .command_endpoint;
        let authority = endpoint.strip_prefix("http://").unwrap_or_else(|| {
            panic!(
                "{}: command_endpoint {endpoint} is not http://",
                overlay.name
            )
        });
        let (host, port) = authority
            .trim_end_matches('/')
            .rsplit_once(':')
            .unwrap_or_else(|| {
                panic!(
                    "{}: command_endpoint {endpoint} names no port",
                    overlay.name
                )
            });
        let port: i64 = port.parse().expect("a port number");
        let mut labels = host.split('.');
        let service_name = labels.next().expect("a host");
        let rest: Vec<&str> = labels.collect();
        let namespace = overlay.namespace();
        assert!(
            matches!(
                rest.as_slice(),
                [] | [_] | [_, "svc"] | [_, "svc", "cluster", "local"]
            ) && rest.first().is_none_or(|ns| *ns == namespace),
            "{}: command_endpoint host {host} is not a Service name of namespace {namespace}",
            overlay.name
        );
        let service = overlay.get("Service", service_name);
        let command = overlay.deployment("command-svc");
        assert!(
            map_selects(&service["spec"]["selector"], &command.labels()),
            "{}: Service {service_name} does not select command-svc's pods",
            overlay.name
        );
        let service_port = list(&service["spec"]["ports"])
            .iter()
            .find(|p| p["port"].as_i64() == Some(port))
            .unwrap_or_else(|| {
                panic!(
                    "{}: Service {service_name} has no port {port}",
                    overlay.name
                )
            });
        let grpc = expected_ports(&command, &command.settings(command.main_container()))["grpc"];
        assert_eq!(
            command.container_port(&service_port["targetPort"]),
            Some(("grpc".to_owned(), grpc)),
            "{}: {endpoint} must lead to command-svc's grpc port {grpc}",
            overlay.name
        );
    }
}

/// The HorizontalPodAutoscaler scaling `deployment`, if any (at most one may).
fn autoscaler_of<'a>(overlay: &'a Overlay, deployment: &str) -> Option<&'a Value> {
    let mut scaling = overlay
        .all("HorizontalPodAutoscaler")
        .filter(|hpa| hpa["spec"]["scaleTargetRef"]["name"] == deployment);
    let first = scaling.next();
    assert!(
        scaling.next().is_none(),
        "{}: two HPAs scale {deployment}",
        overlay.name
    );
    first
}

#[test]
fn autoscalers_scale_deployments_that_leave_them_the_replica_count() {
    for overlay in overlays() {
        for hpa in overlay.all("HorizontalPodAutoscaler") {
            let target = &hpa["spec"]["scaleTargetRef"];
            let what = format!("{}: HPA {}", overlay.name, name_of(hpa));
            assert_eq!(
                (target["apiVersion"].as_str(), target["kind"].as_str()),
                (Some("apps/v1"), Some("Deployment")),
                "{what} must scale a Deployment"
            );
            let workload = overlay.deployment(text(&target["name"], "scaleTargetRef.name"));
            let min = hpa["spec"]["minReplicas"].as_i64().unwrap_or(1);
            let max = hpa["spec"]["maxReplicas"].as_i64().expect("maxReplicas");
            assert!((1..=max).contains(&min), "{what}: 1 <= min <= max");
            assert!(
                workload.doc["spec"]["replicas"].is_null(),
                "{}: the HPA owns the replica count; with spec.replicas every apply resets it",
                workload.describe()
            );
            for container in workload.containers() {
                assert!(
                    !container["resources"]["requests"]["cpu"].is_null(),
                    "{}: CPU utilisation needs a CPU request",
                    workload.describe()
                );
            }
        }
        for must_scale in ["command-svc", "query-svc"] {
            assert!(
                autoscaler_of(overlay, must_scale).is_some(),
                "{}: {must_scale} has no HorizontalPodAutoscaler",
                overlay.name
            );
        }
    }
}

#[test]
fn disruption_budgets_cover_every_replicated_deployment() {
    for overlay in overlays() {
        let mut budgeted = BTreeSet::new();
        for pdb in overlay.all("PodDisruptionBudget") {
            let what = format!("{}: PDB {}", overlay.name, name_of(pdb));
            let selected = overlay.selected_by(&pdb["spec"]["selector"]);
            let [workload] = selected.as_slice() else {
                panic!(
                    "{what} selects {} workloads, not one Deployment",
                    selected.len()
                );
            };
            assert_eq!(workload.kind(), "Deployment", "{what}");
            if let Some(max_unavailable) = pdb["spec"]["maxUnavailable"].as_i64() {
                assert!(max_unavailable >= 1, "{what} blocks every drain");
            }
            budgeted.insert(workload.name());
        }
        for service in SERVICES {
            let workload = overlay.deployment(service);
            let most = autoscaler_of(overlay, service)
                .map(|hpa| hpa["spec"]["maxReplicas"].as_i64().expect("maxReplicas"))
                .or_else(|| workload.doc["spec"]["replicas"].as_i64())
                .unwrap_or(1);
            assert!(
                most <= 1 || budgeted.contains(service),
                "{}: runs up to {most} replicas without a PodDisruptionBudget",
                workload.describe()
            );
        }
    }
}

/// A pod that may or may not reach a billing pod.
struct Caller {
    what: &'static str,
    namespace_labels: BTreeMap<String, String>,
    pod_labels: BTreeMap<String, String>,
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// A caller from another namespace, named `namespace`, with the namespace's extra labels.
fn caller_from(
    what: &'static str,
    namespace: &str,
    namespace_labels: &[(&str, &str)],
    pod_labels: &[(&str, &str)],
) -> Caller {
    let mut ns = labels(namespace_labels);
    ns.insert(
        "kubernetes.io/metadata.name".to_owned(),
        namespace.to_owned(),
    );
    Caller {
        what,
        namespace_labels: ns,
        pod_labels: labels(pod_labels),
    }
}

/// A pod of this overlay's own workloads.
fn own_pod(overlay: &Overlay, workload: &Workload, what: &'static str) -> Caller {
    Caller {
        what,
        namespace_labels: overlay.namespace_labels(),
        pod_labels: workload.labels(),
    }
}

fn peer_admits(peer: &Value, caller: &Caller, same_namespace: bool) -> bool {
    let pods_match =
        peer["podSelector"].is_null() || selects(&peer["podSelector"], &caller.pod_labels);
    if peer["namespaceSelector"].is_object() {
        selects(&peer["namespaceSelector"], &caller.namespace_labels) && pods_match
    } else {
        // ipBlock peers are not modelled: they admit no pod here.
        peer["podSelector"].is_object() && same_namespace && pods_match
    }
}

/// Whether the NetworkPolicies let `caller` connect to `target`'s port named `port`.
fn admits(overlay: &Overlay, target: &Workload, caller: &Caller, port: &str) -> bool {
    let (_, number) = target
        .container_port(&Value::from(port))
        .unwrap_or_else(|| panic!("{}: no port {port}", target.describe()));
    let same_namespace = caller.namespace_labels == overlay.namespace_labels();
    let policies: Vec<&Value> = overlay
        .all("NetworkPolicy")
        .filter(|p| selects(&p["spec"]["podSelector"], &target.labels()))
        .filter(|p| {
            let types = list(&p["spec"]["policyTypes"]);
            types.is_empty() || types.iter().any(|t| t == "Ingress")
        })
        .collect();
    if policies.is_empty() {
        return true;
    }
    policies
        .iter()
        .flat_map(|p| list(&p["spec"]["ingress"]))
        .any(|rule| {
            let ports = list(&rule["ports"]);
            let port_ok = ports.is_empty()
                || ports.iter().any(|p| {
                    p["port"].is_null() || p["port"] == port || p["port"].as_i64() == Some(number)
                });
            let from = list(&rule["from"]);
            let from_ok = from.is_empty()
                || from
                    .iter()
                    .any(|peer| peer_admits(peer, caller, same_namespace));
            port_ok && from_ok
        })
}

#[test]
fn network_policies_name_real_ports_and_select_real_pods() {
    for overlay in overlays() {
        for policy in overlay.all("NetworkPolicy") {
            let name = name_of(policy);
            let selected = overlay.selected_by(&policy["spec"]["podSelector"]);
            assert!(
                !selected.is_empty(),
                "{}: NetworkPolicy {name} selects no pod",
                overlay.name
            );
            for rule in list(&policy["spec"]["ingress"]) {
                assert!(
                    !list(&rule["from"]).is_empty(),
                    "{}: NetworkPolicy {name} has a rule open to every source",
                    overlay.name
                );
                for peer in list(&rule["from"]) {
                    if peer["namespaceSelector"].is_null() {
                        assert!(
                            !overlay.selected_by(&peer["podSelector"]).is_empty(),
                            "{}: NetworkPolicy {name} admits pods of this namespace that no \
                             workload here has: {}",
                            overlay.name,
                            peer["podSelector"]
                        );
                    }
                }
                for port in list(&rule["ports"]) {
                    for workload in &selected {
                        assert!(
                            workload.container_port(&port["port"]).is_some(),
                            "{}: NetworkPolicy {name} opens port {}, which {} does not declare",
                            overlay.name,
                            port["port"],
                            workload.describe()
                        );
                    }
                }
            }
        }
        for workload in overlay.workloads() {
            let isolated = overlay.all("NetworkPolicy").any(|p| {
                selects(&p["spec"]["podSelector"], &workload.labels())
                    && list(&p["spec"]["policyTypes"])
                        .iter()
                        .any(|t| t == "Ingress")
            });
            assert!(
                isolated,
                "{}: no NetworkPolicy isolates its pods",
                workload.describe()
            );
        }
    }
}

#[test]
fn network_policies_admit_exactly_the_documented_callers() {
    let access = ("billing.devshare.io/access", "true");
    let client = "billing.devshare.io/client";
    for overlay in overlays() {
        let command = overlay.deployment("command-svc");
        let query = overlay.deployment("query-svc");
        let scheduler = overlay.deployment("scheduler-svc");
        let job = overlay.migration_job();

        let gateway = caller_from("the gateway", "gateway", &[access], &[(client, "gateway")]);
        let payment = caller_from(
            "the payment service",
            "payment",
            &[access],
            &[(client, "payment")],
        );
        let prometheus = caller_from(
            "Prometheus",
            "monitoring",
            &[],
            &[("app.kubernetes.io/name", "prometheus")],
        );
        let ingress = caller_from(
            "the ingress controller",
            "ingress-nginx",
            &[],
            &[("app.kubernetes.io/name", "ingress-nginx")],
        );
        let unlabelled_gateway = caller_from(
            "a gateway in an unlabelled namespace",
            "gateway",
            &[],
            &[(client, "gateway")],
        );
        let stranger = caller_from(
            "an unlabelled pod of a client namespace",
            "gateway",
            &[access],
            &[],
        );
        let query_pod = own_pod(overlay, &query, "query-svc");
        let job_pod = own_pod(overlay, &job, "the migration Job");
        let scheduler_pod = own_pod(overlay, &scheduler, "scheduler-svc");
        let command_pod = own_pod(overlay, &command, "command-svc");

        let expectations = [
            (&command, &gateway, "grpc", true),
            (&command, &gateway, "http", false),
            (&command, &payment, "grpc", true),
            (&command, &payment, "http", true),
            (&command, &query_pod, "grpc", true),
            (&command, &job_pod, "grpc", true),
            (&command, &prometheus, "http", true),
            (&command, &prometheus, "grpc", false),
            (&command, &scheduler_pod, "grpc", false),
            (&command, &unlabelled_gateway, "grpc", false),
            (&command, &stranger, "grpc", false),
            (&query, &ingress, "http", true),
            (&query, &prometheus, "http", true),
            (&query, &command_pod, "http", false),
            (&query, &gateway, "http", false),
            (&scheduler, &prometheus, "http", true),
            (&scheduler, &query_pod, "http", false),
            (&scheduler, &ingress, "http", false),
        ];
        for (target, caller, port, expected) in expectations {
            assert_eq!(
                admits(overlay, target, caller, port),
                expected,
                "{}: {} must {}be able to reach port {port}",
                target.describe(),
                caller.what,
                if expected { "" } else { "not " }
            );
        }
    }
}

#[test]
fn every_container_is_bounded_and_unprivileged() {
    for overlay in overlays() {
        for workload in overlay.workloads() {
            let pod = &workload.pod_spec()["securityContext"];
            for container in workload.containers() {
                let what = format!("{} container {}", workload.describe(), container["name"]);
                for resource in ["cpu", "memory"] {
                    let resources = &container["resources"];
                    let request = quantity(
                        &resources["requests"][resource],
                        &format!("{what}: requests.{resource}"),
                    );
                    let limit = quantity(
                        &resources["limits"][resource],
                        &format!("{what}: limits.{resource}"),
                    );
                    assert!(
                        request <= limit,
                        "{what}: {resource} request above its limit"
                    );
                }
                let own = &container["securityContext"];
                let effective = |key: &str| {
                    if own[key].is_null() {
                        pod[key].clone()
                    } else {
                        own[key].clone()
                    }
                };
                assert_eq!(effective("runAsNonRoot"), true, "{what}: runAsNonRoot");
                for id in ["runAsUser", "runAsGroup"] {
                    assert!(
                        effective(id).as_i64().is_some_and(|id| id > 0),
                        "{what}: {id} must be a numeric id other than root's"
                    );
                }
                assert_eq!(
                    effective("seccompProfile")["type"],
                    "RuntimeDefault",
                    "{what}: seccompProfile"
                );
                assert_eq!(
                    own["allowPrivilegeEscalation"], false,
                    "{what}: allowPrivilegeEscalation"
                );
                assert_eq!(
                    own["readOnlyRootFilesystem"], true,
                    "{what}: readOnlyRootFilesystem"
                );
                assert_ne!(own["privileged"], true, "{what}: privileged");
                assert!(
                    list(&own["capabilities"]["drop"])
                        .iter()
                        .any(|c| c == "ALL")
                        && list(&own["capabilities"]["add"]).is_empty(),
                    "{what}: must drop ALL capabilities and add none"
                );
            }
        }
    }
}

#[test]
fn the_schema_is_migrated_by_the_job_and_prod_never_migrates_at_start() {
    for overlay in overlays() {
        let job = overlay.migration_job();
        let container = job
            .containers()
            .into_iter()
            .find(|c| billingctl_command(c).first().map(String::as_str) == Some("migrate"))
            .expect("the migrating container");
        job.settings(container);
        assert_eq!(
            job.doc["spec"]["template"]["spec"]["restartPolicy"],
            "Never",
            "{}: a failed migration is retried by the Job's backoffLimit, as a new pod",
            job.describe()
        );
    }
    let prod = overlays()
        .iter()
        .find(|o| o.name == "prod")
        .expect("the prod overlay");
    for workload in prod.workloads() {
        for container in workload.containers() {
            let what = format!("{} container {}", workload.describe(), container["name"]);
            assert!(
                !workload.settings(container).database.migrate_on_start,
                "{what}: prod applies the schema with the migration Job only \
                 (database.migrate_on_start: false)"
            );
            let image = text(&container["image"], "image");
            let tag = image
                .rsplit('/')
                .next()
                .and_then(|last| last.split_once(':'));
            assert!(
                image.contains("@sha256:")
                    || tag.is_some_and(|(_, tag)| !tag.is_empty() && tag != "latest"),
                "{what}: prod images are pinned to a release tag or digest, not {image}"
            );
        }
    }
}
