//! The Helm chart against the binary it deploys: the Deployment rendered
//! with every optional part on starts `quotad` with flags and a config it
//! accepts (`quotad serve --check-only`, with the chart's own Secrets and
//! ConfigMaps written where the pod would mount them), and its ports,
//! probes, Service, ServiceMonitor and Redis address agree with those
//! flags. `scripts/helm-check.sh` lints and schema-validates the chart;
//! this is what a schema cannot see.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::support::TestCa;

const BIN: &str = env!("CARGO_BIN_EXE_quotad");

/// Where the pod mounts things; rewritten into a temporary directory.
const MOUNTS: &str = "/etc/quotad";

/// helm: `$QUOTAD_HELM` (set by scripts/test.sh: then required), else
/// `helm` on PATH.
fn helm() -> Option<PathBuf> {
    crate::support::tool("QUOTAD_HELM", "helm")
}

/// A test CA's server certificate and key for `t-quotad`, and the CA's
/// certificate, as files in `dir`: (cert, key, ca) paths.
fn certs(dir: &Path) -> (String, String, String) {
    let ca = TestCa::new("quotad test CA");
    let (cert, key) = ca.leaf("quotad", &["t-quotad"]);
    let file = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    (
        file("c.pem", &cert),
        file("k.pem", &key),
        file("ca.pem", &ca.cert_pem),
    )
}

/// The manifests `helm template` renders, by kind and name.
struct Rendered(BTreeMap<(String, String), Value>);

impl Rendered {
    fn get(&self, kind: &str, name: &str) -> &Value {
        self.0
            .get(&(kind.to_owned(), name.to_owned()))
            .unwrap_or_else(|| panic!("no {kind} {name} in {:?}", self.0.keys()))
    }

    fn of_kind(&self, kind: &str) -> Vec<&Value> {
        self.0
            .iter()
            .filter(|((k, _), _)| k == kind)
            .map(|(_, v)| v)
            .collect()
    }
}

fn chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("helm/quotad")
}

/// `helm template t helm/quotad <extra>`, parsed.
fn render(helm: &Path, extra: &[String]) -> Rendered {
    let out = Command::new(helm)
        .args(["template", "t"])
        .arg(chart())
        .args(extra)
        .output()
        .expect("helm runs");
    assert!(
        out.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let mut docs = BTreeMap::new();
    for doc in text.split("\n---\n") {
        if doc
            .lines()
            .all(|l| l.trim().is_empty() || l.starts_with('#'))
        {
            continue;
        }
        let v: Value = serde_saphyr::from_str(doc).unwrap_or_else(|e| panic!("{e}: {doc}"));
        let kind = v["kind"].as_str().expect("kind").to_owned();
        let name = v["metadata"]["name"].as_str().expect("name").to_owned();
        docs.insert((kind, name), v);
    }
    Rendered(docs)
}

/// A Dockerfile instruction in exec form (`ENTRYPOINT`, `CMD`), as words.
fn dockerfile(instruction: &str) -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("Dockerfile");
    let text = std::fs::read_to_string(path).expect("Dockerfile");
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{instruction} ")))
        .unwrap_or_else(|| panic!("no {instruction}"));
    serde_json::from_str(line).expect("exec form")
}

/// The image's `ENTRYPOINT` after the binary (`["serve"]`): what the
/// chart's arguments follow.
fn entrypoint() -> Vec<String> {
    let words = dockerfile("ENTRYPOINT");
    assert!(words[0].ends_with("/quotad"), "{words:?}");
    words[1..].to_vec()
}

#[test]
fn the_image_default_command_is_one_the_binary_accepts() {
    let out = Command::new(BIN)
        .args(entrypoint())
        .args(dockerfile("CMD"))
        .arg("--check-only")
        .env_remove("QUOTAD_CONFIG")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        said.contains("grpc 0.0.0.0:8081, http 0.0.0.0:9090"),
        "{said}"
    );
}

/// The port of a `--flag=host:port` argument.
fn flag_port(args: &[String], flag: &str) -> u64 {
    let value = args
        .iter()
        .find_map(|a| a.strip_prefix(&format!("{flag}=")))
        .unwrap_or_else(|| panic!("no {flag} in {args:?}"));
    value
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{flag}={value}"))
}

#[test]
fn the_chart_starts_the_binary_with_flags_and_files_it_accepts() {
    let Some(helm) = helm() else {
        eprintln!("note: no helm (scripts/test.sh fetches it); the chart is not checked");
        return;
    };
    // TLS from certificates of the test's own, so the chart writes the
    // Secrets the pod mounts (the CI values name existing ones).
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, ca_pem) = certs(dir.path());
    let sets = [
        "-f".to_owned(),
        chart()
            .join("ci/all-features-values.yaml")
            .display()
            .to_string(),
        "--set".to_owned(),
        "tls.existingSecret=,admin.tls.existingSecret=".to_owned(),
        "--set-file".to_owned(),
        format!(
            "tls.cert={cert},tls.key={key},tls.ca={ca_pem},admin.tls.cert={cert},admin.tls.key={key}"
        ),
    ];
    let r = render(&helm, &sets);
    let deploy = r.get("Deployment", "t-quotad");
    let pod = &deploy["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let args: Vec<String> = container["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("string arg").to_owned())
        .collect();

    // Ports and probes agree with the flags.
    let ports: BTreeMap<&str, u64> = container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap(),
                p["containerPort"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(ports["grpc"], flag_port(&args, "--grpc-addr"));
    assert_eq!(ports["http-metrics"], flag_port(&args, "--http-addr"));
    assert_eq!(ports["grpc-admin"], flag_port(&args, "--admin-addr"));
    assert_eq!(ports["http-check"], flag_port(&args, "--http-check-addr"));
    for (probe, path) in [("livenessProbe", "/livez"), ("readinessProbe", "/readyz")] {
        assert_eq!(container[probe]["httpGet"]["path"], path);
        assert_eq!(container[probe]["httpGet"]["port"], "http-metrics");
    }
    // The Service targets those ports by name and selects these pods; the
    // ServiceMonitor selects the Service and scrapes /metrics on its port.
    let service = r.get("Service", "t-quotad");
    let pod_labels = &deploy["spec"]["template"]["metadata"]["labels"];
    for (k, v) in service["spec"]["selector"].as_object().unwrap() {
        assert_eq!(&pod_labels[k], v, "the Service's selector {k}");
    }
    for p in service["spec"]["ports"].as_array().unwrap() {
        let target = p["targetPort"].as_str().unwrap();
        assert!(ports.contains_key(target), "Service targetPort {target}");
    }
    let monitor = r.get("ServiceMonitor", "t-quotad");
    for (k, v) in monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(
            &service["metadata"]["labels"][k], v,
            "the ServiceMonitor's selector {k}"
        );
    }
    assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");
    let scraped = monitor["spec"]["endpoints"][0]["port"].as_str().unwrap();
    assert!(
        service["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == scraped),
        "ServiceMonitor port {scraped}"
    );
    // The bundled Redis's pods are not quotad's.
    let redis_pods =
        &r.get("Deployment", "t-quotad-redis")["spec"]["template"]["metadata"]["labels"];
    assert_ne!(
        redis_pods["app.kubernetes.io/component"],
        pod_labels["app.kubernetes.io/component"]
    );

    let said = starts(&r, dir.path());
    for part in [
        "redis: redis://t-quotad-redis:6379/0",
        "admin: 0.0.0.0:8082",
        "(mTLS)",
        "rls domain shop",
    ] {
        assert!(said.contains(part), "{part:?} not in:\n{said}");
    }
    // No selector of quotad's picks the bundled Redis's pods.
    let redis_labels =
        &r.get("Deployment", "t-quotad-redis")["spec"]["template"]["metadata"]["labels"];
    let selects_redis = |selector: &Value| {
        selector
            .as_object()
            .unwrap()
            .iter()
            .all(|(k, v)| &redis_labels[k] == v)
    };
    for (kind, name, at) in [
        ("Service", "t-quotad", "/spec/selector"),
        ("Service", "t-quotad-headless", "/spec/selector"),
        ("Service", "t-quotad-admin", "/spec/selector"),
        (
            "PodDisruptionBudget",
            "t-quotad",
            "/spec/selector/matchLabels",
        ),
        ("NetworkPolicy", "t-quotad", "/spec/podSelector/matchLabels"),
        ("Deployment", "t-quotad", "/spec/selector/matchLabels"),
    ] {
        let selector = r.get(kind, name).pointer(at).expect("a selector");
        assert!(
            !selects_redis(selector),
            "{kind} {name} selects the Redis pods"
        );
    }
    assert_eq!(r.of_kind("HorizontalPodAutoscaler").len(), 1);
    assert!(
        deploy["spec"].get("replicas").is_none(),
        "the HPA owns replicas"
    );
}

/// Writes every Secret and ConfigMap the quotad pod mounts where it would
/// see them (under `dir`), runs the image's entrypoint with the chart's
/// arguments and `--check-only`, and returns what it printed.
fn starts(r: &Rendered, dir: &Path) -> String {
    starts_with(r, dir, &[])
}

/// [`starts`], with `secrets` (name, [(key, text)]) standing for Secrets
/// of the user's that the chart mounts but does not render.
fn starts_with(r: &Rendered, dir: &Path, secrets: &[(&str, &[(&str, &str)])]) -> String {
    let deploy = r.get("Deployment", "t-quotad");
    let pod = &deploy["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let args: Vec<String> = container["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("string arg").to_owned())
        .collect();
    // Write every mounted Secret and ConfigMap where the pod would see it
    // (under a temporary root), then let the binary check it all.
    let root = dir.join("root");
    let volumes: BTreeMap<&str, &Value> = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["name"].as_str().unwrap(), v))
        .collect();
    let rewrite = |text: &str| text.replace(MOUNTS, &format!("{}{MOUNTS}", root.display()));
    for m in container["volumeMounts"].as_array().unwrap() {
        let volume = volumes[m["name"].as_str().unwrap()];
        let at = PathBuf::from(rewrite(m["mountPath"].as_str().unwrap()));
        let users = volume["secret"]["secretName"]
            .as_str()
            .and_then(|name| secrets.iter().find(|(n, _)| *n == name));
        if let Some((_, files)) = users {
            std::fs::create_dir_all(&at).unwrap();
            for (key, text) in *files {
                std::fs::write(at.join(key), text).unwrap();
            }
            continue;
        }
        let (files, field) = if let Some(name) = volume["secret"]["secretName"].as_str() {
            (r.get("Secret", name), "stringData")
        } else {
            let name = volume["configMap"]["name"]
                .as_str()
                .expect("a Secret or a ConfigMap");
            (r.get("ConfigMap", name), "data")
        };
        std::fs::create_dir_all(&at).unwrap();
        for (name, text) in files[field].as_object().unwrap() {
            std::fs::write(at.join(name), rewrite(text.as_str().unwrap())).unwrap();
        }
    }
    // The Redis the config names is the bundled one's Service, if any.
    let config = std::fs::read_to_string(root.join("etc/quotad/config/quotad.yaml")).unwrap();
    if config.contains("url: redis://t-quotad-redis:") {
        r.get("Service", "t-quotad-redis");
    }
    // The image's entrypoint, then the chart's arguments.
    let out = Command::new(BIN)
        .args(entrypoint())
        .args(args.iter().map(|a| rewrite(a)))
        .arg("--check-only")
        .env_remove("QUOTAD_CONFIG")
        .env_remove("QUOTAD_REDIS")
        .output()
        .unwrap();
    let said = crate::support::printed(&out);
    assert!(
        out.status.success(),
        "quotad refused the chart's arguments: {said}"
    );
    said
}

#[test]
fn other_value_sets_start_the_binary_too() {
    let Some(helm) = helm() else {
        eprintln!("note: no helm (scripts/test.sh fetches it); the chart is not checked");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, _) = certs(dir.path());
    let token = "0".repeat(64);
    let cases: [(&str, Vec<String>, &str); 4] = [
        ("defaults", vec![], "redis: off"),
        (
            "admin behind a mesh",
            vec![
                "--set".into(),
                format!(
                    "admin.enabled=true,admin.insecurePlaintext=true,admin.tokens[0].id=ops,admin.tokens[0].sha256={token},admin.tokens[0].scopes[0]=read"
                ),
            ],
            "admin: 0.0.0.0:8082, tokens ops (read)",
        ),
        (
            "TLS without client certificates",
            vec![
                "--set".into(),
                "tls.enabled=true".into(),
                "--set-file".into(),
                format!("tls.cert={cert},tls.key={key}"),
            ],
            "tls on, cert",
        ),
        (
            "an external Redis",
            vec![
                "--set".into(),
                "redis.url=redis://:pw@redis.prod:6379/2".into(),
                "--set-string".into(),
                "store.hashSecret=00112233445566778899001122334455".into(),
            ],
            "redis: redis://:<redacted>@redis.prod:6379/2",
        ),
    ];
    for (name, sets, want) in cases {
        let r = render(&helm, &sets);
        let at = dir.path().join(name.replace(' ', "-"));
        let said = starts(&r, &at);
        assert!(said.contains(want), "{name}: {want:?} not in:\n{said}");
    }
}

#[test]
fn the_chart_ships_the_dashboard_as_it_is() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let shipped = std::fs::read(chart().join("dashboards/quotad.json")).unwrap();
    let source = std::fs::read(root.join("dashboards/quotad.json")).unwrap();
    assert!(
        shipped == source,
        "helm/quotad/dashboards/quotad.json differs from dashboards/quotad.json: copy it again"
    );
}

#[test]
fn a_change_of_a_restart_only_setting_restarts_the_pods_and_a_live_one_does_not() {
    let Some(helm) = helm() else {
        eprintln!("note: no helm (scripts/test.sh fetches it); the chart is not checked");
        return;
    };
    let restart = |set: &[&str]| {
        let extra: Vec<String> = set
            .iter()
            .flat_map(|s| ["--set".to_owned(), (*s).to_owned()])
            .collect();
        let r = render(&helm, &extra);
        r.get("Deployment", "t-quotad")["spec"]["template"]["metadata"]["annotations"]
            ["checksum/restart"]
            .as_str()
            .expect("a checksum/restart annotation")
            .to_owned()
    };
    let base = restart(&[]);
    // Each read only at start (helm/quotad/restart-only.yaml).
    for set in [
        "config.server.max_connection_age=10m",
        "config.server.max_concurrent_streams=50",
        "config.server.idle_timeout=2m",
        "config.server.max_message_bytes=65536",
        "config.server.keepalive_interval=30s",
        "store.maxTrackedKeys=5000",
    ] {
        assert_ne!(restart(&[set]), base, "{set} must restart the pods");
    }
    // Applied by a reload: no restart.
    for set in ["config.requests.max_cost=5", "config.response_headers=off"] {
        assert_eq!(restart(&[set]), base, "{set} is applied without a restart");
    }
}

#[test]
fn a_long_release_name_still_makes_valid_service_names() {
    let Some(helm) = helm() else {
        eprintln!("note: no helm (scripts/test.sh fetches it); the chart is not checked");
        return;
    };
    let long = "a".repeat(70);
    let r = render(
        &helm,
        &[
            "--set".into(),
            format!("fullnameOverride={long}"),
            "--set".into(),
            "redis.deploy.enabled=true,store.hashSecret=00112233445566778899aabbccddeeff".into(),
        ],
    );
    let services = r.of_kind("Service");
    assert!(services.len() >= 3, "{services:?}");
    for s in services {
        let name = s["metadata"]["name"].as_str().expect("a name");
        // A Service name is a DNS-1035 label: at most 63 characters.
        assert!(name.len() <= 63, "{name} ({} characters)", name.len());
    }
}

#[test]
fn replicas_without_redis_are_refused_unless_per_pod_limits_are_wanted() {
    let Some(helm) = helm() else {
        eprintln!("note: no helm (scripts/test.sh fetches it); the chart is not checked");
        return;
    };
    let template = |set: &str| {
        Command::new(&helm)
            .args(["template", "t"])
            .arg(chart())
            .args(["--set", set])
            .output()
            .expect("helm runs")
    };
    for refused in ["replicaCount=2", "autoscaling.enabled=true"] {
        let out = template(refused);
        assert!(!out.status.success(), "{refused} rendered");
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(
            said.contains("more than one replica") && said.contains("allowUnsyncedReplicas"),
            "{refused}: {said}"
        );
    }
    for accepted in [
        "replicaCount=2,allowUnsyncedReplicas=true",
        "replicaCount=2,redis.url=redis://redis:6379,store.hashSecret=00112233445566778899aabbccddeeff",
        "autoscaling.enabled=true,redis.deploy.enabled=true,store.hashSecret=00112233445566778899aabbccddeeff",
    ] {
        let out = template(accepted);
        assert!(out.status.success(), "{accepted}: {out:?}");
    }
    // The default is one pod.
    let r = render(&helm, &[]);
    assert_eq!(r.get("Deployment", "t-quotad")["spec"]["replicas"], 1);
}

#[test]
fn a_grace_period_shorter_than_the_drain_is_refused() {
    let Some(helm) = helm() else {
        eprintln!("note: no helm (scripts/test.sh fetches it); the chart is not checked");
        return;
    };
    let out = Command::new(&helm)
        .args(["template", "t"])
        .arg(chart())
        .args(["--set", "terminationGracePeriodSeconds=20"])
        .output()
        .expect("helm runs");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(
            "terminationGracePeriodSeconds (20) must be at least shutdown.drainDelay (15s) + shutdown.shutdownGrace (10s) + 4 s (29)"
        ),
        "{out:?}"
    );
    // The defaults: a drain Envoy's DNS refresh fits in, a grace above
    // it, connections aged out.
    let r = render(&helm, &[]);
    let spec = &r.get("Deployment", "t-quotad")["spec"]["template"]["spec"];
    assert_eq!(spec["terminationGracePeriodSeconds"], 35);
}

#[test]
fn production_redis_settings_and_secrets_pass_through_to_the_binary() {
    let Some(helm) = helm() else {
        eprintln!("note: no helm (scripts/test.sh fetches it); the chart is not checked");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ca = crate::support::TestCa::new("redis CA");
    let r = render(
        &helm,
        &[
            "--set".into(),
            "redis.url=rediss://redis.prod:6380/0,redis.cluster=true,redis.keyPrefix=q:,redis.strictDeadline=50ms,redis.firstReadMinWindow=off,redis.existingSecret=redis-auth,redis.caSecret=redis-ca,store.existingSecret=quotad-hash".into(),
        ],
    );
    let said = starts_with(
        &r,
        dir.path(),
        &[
            ("redis-auth", &[("password", "s3cret-redis-password")]),
            ("redis-ca", &[("ca.crt", ca.cert_pem.as_str())]),
            (
                "quotad-hash",
                &[("hash-secret", "00112233445566778899aabbccddeeff\n")],
            ),
        ],
    );
    // The binary took every setting and file: cluster mode, the prefix,
    // the deadline, the password (never shown) and the hash secret.
    assert!(said.contains("hash secret set"), "{said}");
    assert!(!said.contains("s3cret-redis-password"), "{said}");
    let config = &r.get("Secret", "t-quotad-config")["stringData"]["quotad.yaml"];
    let config = config.as_str().expect("the config");
    for want in [
        "cluster: true",
        "key_prefix: 'q:'",
        "strict_deadline: 50ms",
        "first_read_min_window: \"off\"",
        "password_file: /etc/quotad/redis-password/password",
        "tls_ca_file: /etc/quotad/redis-ca/ca.crt",
    ] {
        assert!(config.contains(want), "{want} missing: {config}");
    }
    assert!(
        !config.contains("hash_secret"),
        "from the Secret, not the config: {config}"
    );
}

#[test]
fn the_charts_smaller_promises_hold() {
    let Some(helm) = helm() else {
        eprintln!("note: no helm (scripts/test.sh fetches it); the chart is not checked");
        return;
    };
    let secret = "store.hashSecret=00112233445566778899aabbccddeeff";
    // The bundled Redis: one pod at a time, checked alive, maxmemory from
    // its limit (80 % of 256 MiB).
    let r = render(
        &helm,
        &[
            "--set".into(),
            format!("redis.deploy.enabled=true,{secret}"),
        ],
    );
    let redis = &r.get("Deployment", "t-quotad-redis")["spec"];
    assert_eq!(redis["strategy"]["type"], "Recreate");
    let container = &redis["template"]["spec"]["containers"][0];
    assert!(container["livenessProbe"].is_object(), "{container:?}");
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let at = args.iter().position(|a| *a == "--maxmemory").unwrap();
    assert_eq!(args[at + 1], (256u64 * 1024 * 1024 * 4 / 5).to_string());
    // An image by digest; a numeric tag refused (1.10 would be 1.1).
    let digest = format!("sha256:{}", "a".repeat(64));
    let r = render(&helm, &["--set".into(), format!("image.digest={digest}")]);
    let image =
        &r.get("Deployment", "t-quotad")["spec"]["template"]["spec"]["containers"][0]["image"];
    assert_eq!(
        image.as_str(),
        Some(format!("ghcr.io/quotad/quotad@{digest}").as_str())
    );
    let dir = tempfile::tempdir().unwrap();
    let numeric = dir.path().join("numeric.yaml");
    std::fs::write(&numeric, "image:\n  tag: 1.10\n").unwrap();
    let out = Command::new(&helm)
        .args(["template", "t"])
        .arg(chart())
        .arg("-f")
        .arg(&numeric)
        .output()
        .unwrap();
    assert!(!out.status.success(), "a numeric tag rendered");
    // With TLS, no appProtocol a mesh would take for plain-text gRPC.
    let r = render(
        &helm,
        &[
            "--set".into(),
            "tls.enabled=true,tls.existingSecret=t".into(),
        ],
    );
    for s in r.of_kind("Service") {
        for port in s["spec"]["ports"].as_array().unwrap() {
            assert_ne!(port["appProtocol"], "grpc", "{s:?}");
        }
    }
    // The PDB lets unready pods go; the HPA scales down slowly.
    let r = render(
        &helm,
        &[
            "--set".into(),
            format!("autoscaling.enabled=true,redis.url=redis://r:6379,{secret}"),
        ],
    );
    let pdb = r.of_kind("PodDisruptionBudget");
    assert_eq!(pdb[0]["spec"]["unhealthyPodEvictionPolicy"], "AlwaysAllow");
    let hpa = r.of_kind("HorizontalPodAutoscaler");
    assert_eq!(
        hpa[0]["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"],
        300
    );
}

#[test]
fn the_alerts_are_valid_rules_on_metrics_quotad_exports() {
    let Some(helm) = helm() else {
        eprintln!("note: no helm (scripts/test.sh fetches it); the chart is not checked");
        return;
    };
    let r = render(
        &helm,
        &["--set".into(), "metrics.prometheusRule.enabled=true".into()],
    );
    let rule = r.get("PrometheusRule", "t-quotad");
    let groups = &rule["spec"]["groups"];
    let rules = groups[0]["rules"].as_array().expect("rules");
    assert!(rules.len() >= 6, "{rules:?}");
    // Every metric an alert reads is one quotad exports (the metrics table
    // of docs/src/observability.md lists them all, tests/metrics.rs checks
    // that).
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/src/observability.md");
    let doc = std::fs::read_to_string(docs).expect("docs/src/observability.md");
    for rule in rules {
        let expr = rule["expr"].as_str().expect("expr");
        for name in expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("quotad_"))
        {
            assert!(doc.contains(&format!("`{name}`")), "{name} in {expr}");
        }
    }
    // And Prometheus takes them.
    let Some(promtool) = crate::support::tool("QUOTAD_PROMTOOL", "promtool") else {
        eprintln!("note: no promtool; the alerts' PromQL is not checked");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.yml");
    let file = serde_json::json!({ "groups": groups });
    std::fs::write(&path, serde_json::to_string(&file).unwrap()).unwrap();
    let out = Command::new(promtool)
        .args(["check", "rules"])
        .arg(&path)
        .output()
        .expect("promtool runs");
    assert!(out.status.success(), "{out:?}");
}

/// `helm test`'s pod runs `quotad probe` through the Service with
/// arguments the binary accepts: pointed at a running quotad (the Service
/// names swapped for its loopback addresses), every step passes. With TLS
/// on, the gRPC steps are skipped (`--grpc=`); a NetworkPolicy with
/// `from` lists lets the probe pod in.
#[tokio::test]
async fn the_helm_test_pod_probes_a_running_quotad() {
    let Some(helm) = helm() else {
        eprintln!("note: no helm (scripts/test.sh fetches it); the chart is not checked");
        return;
    };
    let r = render(&helm, &[]);
    let pod = r.get("Pod", "t-quotad-probe");
    assert_eq!(pod["metadata"]["annotations"]["helm.sh/hook"], "test");
    let container = &pod["spec"]["containers"][0];
    assert_eq!(container["command"][0], "/usr/local/bin/quotad");
    let args: Vec<String> = container["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("a string").to_owned())
        .collect();
    assert_eq!(
        args,
        [
            "probe",
            "--http=http://t-quotad.default.svc:9090",
            "--grpc=http://t-quotad.default.svc:8081",
            "--timeout=10s"
        ]
    );

    let d = crate::support::process::spawn_serve(&[]).await;
    let local: Vec<String> = args
        .iter()
        .map(|a| {
            a.replace("t-quotad.default.svc:9090", &d.http)
                .replace("t-quotad.default.svc:8081", &d.grpc)
        })
        .collect();
    let out = tokio::process::Command::new(BIN)
        .args(&local)
        .output()
        .await
        .expect("quotad probe runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("ok: ")).count(),
        3,
        "{stdout}"
    );

    // TLS on: /readyz only.
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, _) = certs(dir.path());
    let r = render(
        &helm,
        &[
            "--set".into(),
            "tls.enabled=true".into(),
            "--set-file".into(),
            format!("tls.cert={cert},tls.key={key}"),
            "--set".into(),
            "networkPolicy.enabled=true".into(),
            "--set".into(),
            "networkPolicy.grpcFrom[0].podSelector.matchLabels.app=envoy".into(),
        ],
    );
    let args = &r.get("Pod", "t-quotad-probe")["spec"]["containers"][0]["args"];
    assert_eq!(args[2], "--grpc=", "{args:?}");
    let from = &r.get("NetworkPolicy", "t-quotad")["spec"]["ingress"][0]["from"];
    assert_eq!(
        from[1]["podSelector"]["matchLabels"]["app.kubernetes.io/component"], "test",
        "{from:?}"
    );
    // And off with tests.enabled=false.
    let r = render(&helm, &["--set".into(), "tests.enabled=false".into()]);
    assert!(r.of_kind("Pod").is_empty());
}

/// The image's `HEALTHCHECK` is `quotad probe` with arguments the binary
/// accepts, on the ports of the image's default command (here pointed
/// at a running quotad's, which the test cannot bind to 8081 and 9090).
#[tokio::test]
async fn the_image_health_check_probes_a_running_quotad() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("Dockerfile");
    let text = std::fs::read_to_string(path).expect("Dockerfile");
    let line = text
        .lines()
        .find(|l| l.starts_with("HEALTHCHECK "))
        .expect("a HEALTHCHECK");
    let exec = &line[line.find("CMD [").expect("exec form") + 4..];
    let words: Vec<String> = serde_json::from_str(exec).expect("exec form");
    assert!(
        words[0].ends_with("/quotad") && words[1] == "probe",
        "{words:?}"
    );
    let cmd = dockerfile("CMD");
    assert!(
        cmd.contains(&"--grpc-addr=0.0.0.0:8081".to_owned()),
        "the probe's default port"
    );
    assert!(
        cmd.contains(&"--http-addr=0.0.0.0:9090".to_owned()),
        "the probe's default port"
    );
    let d = crate::support::process::spawn_serve(&[]).await;
    let out = tokio::process::Command::new(BIN)
        .args(&words[1..])
        .arg(format!("--http=http://{}", d.http))
        .arg(format!("--grpc=http://{}", d.grpc))
        .output()
        .await
        .expect("quotad probe runs");
    assert!(out.status.success(), "{out:?}");
}
