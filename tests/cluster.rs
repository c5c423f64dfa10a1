//! Hookline as real pods: the Helm chart installed with the locally built image (`hack/image`)
//! into the single-node cluster of `hack/cluster` (kubelet, containerd, kube-proxy), a Stripe
//! webhook sent to the gateway's Service and delivered to a sink running as a pod, a gateway pod
//! deleted under load, a `helm upgrade` that rolls the gateway under load, a leader failover, and
//! 1,000 subscriptions applied at once. Figures are printed as `cluster_<name> <value> <unit>`.
//!
//! `hack/test` brings the cluster up and builds the image; by hand:
//! `eval "$(hack/cluster up)"` in another shell, then export HOOKLINE_CLUSTER_KUBECONFIG (its
//! KUBECONFIG) and HOOKLINE_CLUSTER_DATABASE_URL, run `hack/image`, and `cargo test --test cluster`.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use hookline::api::Provider;
use hookline::verify::{SigningKey, SourceVerifier, stripe};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use kube::api::{Api, DeleteParams, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

const STRIPE_SECRET: &str = "whsec_cluster_test_stripe_secret";
const PUBLISH_TOKEN: &str = "cluster-test-publish-token-0123456789";
const ADMIN_TOKEN: &str = "cluster-test-admin-token-0123456789";
const RELEASE: &str = "hookline";
const SINK_IMAGE: &str = "localhost/hookline-sink:1";

fn require_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: this test needs the single-node cluster and the image. Run it with \
             hack/test, or see the top of tests/cluster.rs"
        )
    })
}

fn figure(name: &str, value: f64, unit: &str) {
    eprintln!("cluster_{name} {value:.2} {unit}");
}

/// The cluster of `hack/cluster`, and the commands that act on it.
struct Cluster {
    kubeconfig: PathBuf,
    client: Client,
}

impl Cluster {
    async fn connect() -> Self {
        let kubeconfig = PathBuf::from(require_env("HOOKLINE_CLUSTER_KUBECONFIG"));
        let config = Config::from_custom_kubeconfig(
            Kubeconfig::read_from(&kubeconfig).expect("cluster kubeconfig"),
            &KubeConfigOptions::default(),
        )
        .await
        .expect("cluster kubeconfig is valid");
        let client = Client::try_from(config).expect("kube client");
        Self { kubeconfig, client }
    }

    /// Runs a tool (kubectl, helm) against the cluster; panics with its output when it fails.
    fn run(&self, program: &str, args: &[&str]) -> String {
        let output = Command::new(program)
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .output()
            .unwrap_or_else(|e| panic!("{program} must be on PATH: {e}"));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(output.status.success(), "{program} {args:?} failed:\n{text}");
        text
    }

    fn apply(&self, yaml: &str) {
        let path = std::env::temp_dir().join(format!("hookline-e2e-{}.yaml", uuid::Uuid::new_v4().simple()));
        std::fs::write(&path, yaml).unwrap();
        self.run(
            "kubectl",
            &["apply", "--server-side", "-f", path.to_str().unwrap()],
        );
        let _ = std::fs::remove_file(path);
    }

    /// Waits until `check` holds, polling; panics with `what` (and the namespace's state).
    async fn wait_for<F, Fut>(&self, what: &str, within: Duration, namespace: &str, mut check: F) -> Duration
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let started = Instant::now();
        while !check().await {
            if started.elapsed() > within {
                let pods = Command::new("kubectl")
                    .args(["get", "pods,deployments,events", "-o", "wide", "-n", namespace])
                    .env("KUBECONFIG", &self.kubeconfig)
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default();
                panic!("{what}: not within {within:?}\n{pods}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        started.elapsed()
    }

    async fn deployment_ready(&self, namespace: &str, name: &str, replicas: i32) -> bool {
        let api: Api<Deployment> = Api::namespaced(self.client.clone(), namespace);
        let Ok(Some(deployment)) = api.get_opt(name).await else {
            return false;
        };
        let generation = deployment.metadata.generation;
        let status = deployment.status.unwrap_or_default();
        status.observed_generation == generation
            && status.ready_replicas.unwrap_or(0) == replicas
            && status.updated_replicas.unwrap_or(0) == replicas
            && status.replicas.unwrap_or(0) == replicas
    }

    async fn ready_condition<K>(&self, api: &Api<K>, name: &str) -> bool
    where
        K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + serde::Serialize,
    {
        let Ok(Some(object)) = api.get_opt(name).await else {
            return false;
        };
        let value = serde_json::to_value(object).unwrap_or_default();
        value["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    }

    /// The gateway Service's ClusterIP address (`http://ip:80`), reached from the host through
    /// kube-proxy.
    async fn gateway_url(&self, namespace: &str) -> String {
        let api: Api<Service> = Api::namespaced(self.client.clone(), namespace);
        let service = api.get("hookline-gateway").await.expect("gateway Service");
        let ip = service.spec.and_then(|s| s.cluster_ip).expect("ClusterIP");
        format!("http://{ip}")
    }

    async fn pods(&self, namespace: &str, selector: &str) -> Vec<Pod> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        api.list(&ListParams::default().labels(selector))
            .await
            .expect("list pods")
            .items
    }
}

/// Removes what an earlier run left: releases of the chart and the namespaces of this test.
async fn clean_up_earlier_runs(cluster: &Cluster) {
    let releases: serde_json::Value =
        serde_json::from_str(&cluster.run("helm", &["list", "-A", "-o", "json"])).unwrap_or_default();
    for release in releases.as_array().into_iter().flatten() {
        let (name, namespace) = (
            release["name"].as_str().unwrap_or_default(),
            release["namespace"].as_str().unwrap_or_default(),
        );
        cluster.run("helm", &["uninstall", name, "-n", namespace, "--wait"]);
    }
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(cluster.client.clone());
    for ns in namespaces
        .list(&ListParams::default().labels("hookline.dev/e2e=true"))
        .await
        .expect("list namespaces")
    {
        let _ = namespaces
            .delete(&ns.metadata.name.unwrap_or_default(), &DeleteParams::default())
            .await;
    }
}

async fn namespace(cluster: &Cluster, prefix: &str) -> String {
    let name = format!("{prefix}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    cluster.apply(&format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}, labels: {{hookline.dev/e2e: 'true'}}}}\n"
    ));
    name
}

/// A database of its own on the cluster's Postgres; its URL works from the host and from pods.
async fn fresh_database() -> String {
    let admin_url = require_env("HOOKLINE_CLUSTER_DATABASE_URL");
    let name = format!("hl_e2e_{}", uuid::Uuid::new_v4().simple());
    let admin = sqlx::PgPool::connect(&admin_url).await.expect("cluster Postgres");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .expect("create database");
    admin.close().await;
    let (base, _) = admin_url.rsplit_once('/').expect("a database in the URL");
    format!("{base}/{name}")
}

/// The sink as a pod: static busybox's httpd with a CGI script that keeps each delivery's
/// Standard Webhooks headers and body in a file, and one that lists them.
fn sink_image() -> PathBuf {
    let cache = std::env::var("HOOKLINE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/hookline"));
    let tarball = cache.join("cluster/hookline-sink.tar");
    std::fs::create_dir_all(tarball.parent().unwrap()).unwrap();
    let hook = "#!/bin/sh\n\
        f=$(mktemp -u /data/req.XXXXXXXX)\n\
        {\n\
          echo \"id=$HTTP_WEBHOOK_ID\"\n\
          echo \"timestamp=$HTTP_WEBHOOK_TIMESTAMP\"\n\
          echo \"signature=$HTTP_WEBHOOK_SIGNATURE\"\n\
          echo \"body=$(head -c \"${CONTENT_LENGTH:-0}\" | base64 -w0)\"\n\
        } >\"$f.tmp\" && mv \"$f.tmp\" \"$f.rec\"\n\
        printf 'Status: 200 OK\\r\\nContent-Type: text/plain\\r\\n\\r\\nok\\n'\n";
    let log = "#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\n'\ncat /data/*.rec 2>/dev/null\n";
    let dir = std::env::temp_dir().join(format!("hookline-sink-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("hook"), hook).unwrap();
    std::fs::write(dir.join("log"), log).unwrap();
    let busybox = which("busybox");
    let mut args: Vec<String> = vec![
        support::repo_path("hack/oci-image.py").display().to_string(),
        "-o".into(),
        tarball.display().to_string(),
        "-t".into(),
        SINK_IMAGE.into(),
        "--file".into(),
        format!("/bin/busybox={busybox}"),
        "--file".into(),
        format!("/www/cgi-bin/hook={},mode=0755", dir.join("hook").display()),
        "--file".into(),
        format!("/www/cgi-bin/log={},mode=0755", dir.join("log").display()),
        "--dir".into(),
        "/data,mode=1777".into(),
        "--env".into(),
        "PATH=/bin".into(),
        "--user".into(),
        "65534:65534".into(),
        "--entrypoint".into(),
        r#"["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"]"#.into(),
    ];
    for applet in ["sh", "mktemp", "head", "base64", "mv", "cat", "printf"] {
        args.push("--symlink".into());
        args.push(format!("/bin/{applet}=busybox"));
    }
    let status = Command::new("python3").args(&args).status().expect("python3");
    assert!(status.success(), "packing the sink image failed");
    tarball
}

fn which(program: &str) -> String {
    let output = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .unwrap();
    let path = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    assert!(!path.is_empty(), "{program} is needed (hack/test installs it)");
    path
}

/// One delivery as the sink received it.
#[derive(Debug, Clone)]
struct Received {
    id: String,
    timestamp: String,
    signature: String,
    body: Vec<u8>,
}

/// Everything the sink pod has received, read through its `log` script with `kubectl exec`.
async fn received(cluster: &Cluster, namespace: &str) -> Vec<Received> {
    let pods = cluster.pods(namespace, "app=sink").await;
    let pod = pods
        .iter()
        .find_map(|p| p.metadata.name.clone())
        .expect("a sink pod");
    let output = Command::new("kubectl")
        .args([
            "exec",
            "-n",
            namespace,
            &pod,
            "--",
            "/bin/busybox",
            "sh",
            "-c",
            "cat /data/*.rec 2>/dev/null || true",
        ])
        .env("KUBECONFIG", &cluster.kubeconfig)
        .output()
        .expect("kubectl exec");
    let text = String::from_utf8_lossy(&output.stdout);
    let mut records = Vec::new();
    let mut fields: HashMap<&str, &str> = HashMap::new();
    for line in text.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if key == "id" && !fields.is_empty() {
            records.extend(record(&fields));
            fields.clear();
        }
        fields.insert(key, value);
    }
    records.extend(record(&fields));
    records
}

fn record(fields: &HashMap<&str, &str>) -> Option<Received> {
    Some(Received {
        id: fields.get("id")?.to_string(),
        timestamp: fields.get("timestamp")?.to_string(),
        signature: fields.get("signature")?.to_string(),
        body: base64::engine::general_purpose::STANDARD
            .decode(fields.get("body")?)
            .ok()?,
    })
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A signed Stripe webhook whose event id is `id`.
fn stripe_webhook(client: &reqwest::Client, url: &str, id: &str) -> reqwest::RequestBuilder {
    let body = format!(
        r#"{{"id":"{id}","object":"event","type":"invoice.paid","data":{{"object":{{"id":"in_{id}"}}}}}}"#
    );
    let key = SigningKey::from_text(STRIPE_SECRET).unwrap();
    let signature = stripe::sign(&key, now(), body.as_bytes());
    client
        .post(url.to_owned())
        .header("content-type", "application/json")
        .header("stripe-signature", signature)
        .body(body)
}

/// The Stripe event ids in what the sink received, with how often each arrived.
fn arrivals(records: &[Received]) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for r in records {
        if let Ok(body) = serde_json::from_slice::<serde_json::Value>(&r.body)
            && let Some(id) = body["id"].as_str()
        {
            *seen.entry(id.to_owned()).or_insert(0) += 1;
        }
    }
    seen
}

/// What a load run saw: acknowledged event ids, and the answers that were not 200.
#[derive(Default)]
struct Load {
    acked: Vec<String>,
    server_errors: u64,
    other_refusals: u64,
    connection_errors: u64,
}

/// Sends signed webhooks with `workers` concurrent senders until `count` were sent or `stop` is
/// set, at most `per_second` a second in total.
async fn send_load(
    url: String,
    prefix: &str,
    count: u64,
    workers: usize,
    per_second: f64,
    stop: Arc<AtomicBool>,
) -> Load {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let next = Arc::new(AtomicU64::new(0));
    let interval = Duration::from_secs_f64(workers as f64 / per_second);
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (client, url, next, stop, prefix) = (
            client.clone(),
            url.clone(),
            next.clone(),
            stop.clone(),
            prefix.to_owned(),
        );
        tasks.push(tokio::spawn(async move {
            let mut load = Load::default();
            let mut tick = tokio::time::interval(interval);
            loop {
                tick.tick().await;
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= count || stop.load(Ordering::Relaxed) {
                    return load;
                }
                let id = format!("{prefix}_{n}");
                match stripe_webhook(&client, &url, &id).send().await {
                    Ok(r) if r.status() == 200 => load.acked.push(id),
                    Ok(r) if r.status().is_server_error() => load.server_errors += 1,
                    Ok(_) => load.other_refusals += 1,
                    Err(_) => load.connection_errors += 1,
                }
            }
        }));
    }
    let mut total = Load::default();
    for task in tasks {
        let load = task.await.unwrap();
        total.acked.extend(load.acked);
        total.server_errors += load.server_errors;
        total.other_refusals += load.other_refusals;
        total.connection_errors += load.connection_errors;
    }
    total
}

/// Waits until every acknowledged event reached the sink; returns how many arrived more than
/// once.
async fn all_delivered(cluster: &Cluster, sink_ns: &str, acked: &[String], within: Duration) -> usize {
    let started = Instant::now();
    loop {
        let seen = arrivals(&received(cluster, sink_ns).await);
        let missing: Vec<&String> = acked.iter().filter(|id| !seen.contains_key(*id)).collect();
        if missing.is_empty() {
            return acked.iter().filter(|id| seen[*id] > 1).count();
        }
        assert!(
            started.elapsed() < within,
            "{} of {} acknowledged webhooks never reached the sink (first: {:?})",
            missing.len(),
            acked.len(),
            missing.first()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// What the history says of the webhooks the sink received more than once (their deliveries'
/// attempts, with times and outcomes) and when the sink got each copy: the failure's evidence.
async fn explain_duplicates(cluster: &Cluster, sink_ns: &str, database_url: &str) {
    let records = received(cluster, sink_ns).await;
    let seen = arrivals(&records);
    let Ok(pool) = sqlx::PgPool::connect(database_url).await else {
        return;
    };
    for (id, _) in seen.iter().filter(|(_, n)| **n > 1).take(5) {
        let copies: Vec<(&str, &str)> = records
            .iter()
            .filter(|r| String::from_utf8_lossy(&r.body).contains(id.as_str()))
            .map(|r| (r.id.as_str(), r.timestamp.as_str()))
            .collect();
        let history: Vec<String> = sqlx::query_scalar(
            "SELECT concat_ws(' ', d.id, d.status, d.attempts, a.attempt_number, a.started_at, a.status_code, a.error)
             FROM events e JOIN delivery_states d ON d.event_id = e.id
             LEFT JOIN attempts a ON a.delivery_id = d.id
             WHERE e.external_id = $1 ORDER BY a.attempt_number",
        )
        .bind(id)
        .fetch_all(&pool)
        .await
        .unwrap_or_default();
        eprintln!("duplicate {id}: received {copies:?}; history {history:?}");
    }
}

/// The values every install and upgrade of this test sets: the local image, two controller
/// replicas (for the failover), both tokens.
fn helm_values() -> Vec<String> {
    [
        "image.repository=hookline",
        "image.tag=dev",
        "image.pullPolicy=Never",
        "controller.replicas=2",
        "publish.existingSecret=hookline-publish",
        "admin.existingSecret=hookline-admin",
    ]
    .iter()
    .map(|v| v.to_string())
    .collect()
}

#[tokio::test]
async fn the_chart_runs_as_pods_and_delivers_through_restarts_and_rollouts() {
    let cluster = Cluster::connect().await;
    clean_up_earlier_runs(&cluster).await;

    // The sink, as a pod in a namespace of its own.
    let hack_cluster = support::repo_path("hack/cluster").display().to_string();
    cluster.run(&hack_cluster, &["import", sink_image().to_str().unwrap()]);
    let sink_ns = namespace(&cluster, "hl-sink").await;
    cluster.apply(&format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: sink, namespace: {sink_ns}}}\n\
         spec:\n  replicas: 1\n  selector: {{matchLabels: {{app: sink}}}}\n  template:\n    metadata: {{labels: {{app: sink}}}}\n\
         \x20   spec:\n      automountServiceAccountToken: false\n      containers:\n      - name: sink\n        image: {SINK_IMAGE}\n\
         \x20       imagePullPolicy: Never\n        ports: [{{containerPort: 8080}}]\n        readinessProbe: {{tcpSocket: {{port: 8080}}, periodSeconds: 1}}\n\
         ---\napiVersion: v1\nkind: Service\nmetadata: {{name: sink, namespace: {sink_ns}}}\n\
         spec: {{selector: {{app: sink}}, ports: [{{port: 8080, targetPort: 8080}}]}}\n"
    ));

    // helm install with the local image, a database of its own, both tokens.
    let system_ns = namespace(&cluster, "hl-system").await;
    let database_url = fresh_database().await;
    for (name, key, value) in [
        ("hookline-database", "url", database_url.as_str()),
        ("hookline-publish", "token", PUBLISH_TOKEN),
        ("hookline-admin", "token", ADMIN_TOKEN),
    ] {
        cluster.run(
            "kubectl",
            &[
                "create",
                "secret",
                "generic",
                name,
                "-n",
                &system_ns,
                &format!("--from-literal={key}={value}"),
            ],
        );
    }
    let chart = support::repo_path("charts/hookline").display().to_string();
    let mut install = vec![
        "install",
        RELEASE,
        chart.as_str(),
        "-n",
        system_ns.as_str(),
        "--wait",
        "--timeout",
        "5m",
    ];
    let values = helm_values();
    for value in &values {
        install.extend(["--set", value.as_str()]);
    }
    let started = Instant::now();
    cluster.run("helm", &install);
    figure(
        "helm_install_to_controller_ready_s",
        started.elapsed().as_secs_f64(),
        "s",
    );
    cluster
        .wait_for(
            "the managed gateway Ready",
            Duration::from_secs(180),
            &system_ns,
            || cluster.deployment_ready(&system_ns, "hookline-gateway", 2),
        )
        .await;
    figure(
        "helm_install_to_gateway_ready_s",
        started.elapsed().as_secs_f64(),
        "s",
    );

    // A Stripe source whose handler is the sink pod, in a third namespace.
    let app_ns = namespace(&cluster, "hl-shop").await;
    let sink_url = format!("http://sink.{sink_ns}.svc.cluster.local:8080/cgi-bin/hook");
    cluster.apply(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: stripe-webhook, namespace: {app_ns}}}\nstringData: {{signing-secret: {STRIPE_SECRET}}}\n\
         ---\napiVersion: hookline.dev/v1alpha1\nkind: WebhookSource\nmetadata: {{name: stripe, namespace: {app_ns}}}\n\
         spec:\n  provider: stripe\n  secretRef: {{name: stripe-webhook, key: signing-secret}}\n\
         \x20 handlers:\n  - {{name: sink, url: '{sink_url}', events: ['*'], timeout: 5s}}\n\
         ---\napiVersion: hookline.dev/v1alpha1\nkind: WebhookSubscription\nmetadata: {{name: unsigned, namespace: {app_ns}}}\n\
         spec: {{url: 'https://crm.example/hooks', events: ['order.*'], secretRef: {{name: missing, key: secret}}}}\n"
    ));
    let sources: Api<hookline::api::WebhookSource> = Api::namespaced(cluster.client.clone(), &app_ns);
    cluster
        .wait_for(
            "the WebhookSource Ready",
            Duration::from_secs(60),
            &app_ns,
            || cluster.ready_condition(&sources, "stripe"),
        )
        .await;
    cluster
        .wait_for("the sink Ready", Duration::from_secs(60), &sink_ns, || {
            cluster.deployment_ready(&sink_ns, "sink", 1)
        })
        .await;
    let listed = cluster.run("kubectl", &["get", "whsrc,whsub", "-n", &app_ns]);
    assert!(
        listed.contains("stripe") && listed.contains("True"),
        "kubectl get:\n{listed}"
    );
    let described = cluster.run("kubectl", &["describe", "whsrc", "stripe", "-n", &app_ns]);
    assert!(
        described.contains("Receiving"),
        "kubectl describe whsrc:\n{described}"
    );
    // The subscription is reconciled beside the source: its Event may come a moment later.
    let describe = || cluster.run("kubectl", &["describe", "whsub", "unsigned", "-n", &app_ns]);
    cluster
        .wait_for(
            "kubectl describe whsub shows the SecretMissing Event",
            Duration::from_secs(30),
            &app_ns,
            || async {
                let described = describe();
                described.contains("SecretMissing") && described.contains("Warning")
            },
        )
        .await;

    // One webhook, to the gateway's Service, delivered to the sink pod and signed.
    let gateway = cluster.gateway_url(&system_ns).await;
    let ingest = format!("{gateway}/ingest/{app_ns}/stripe");
    let http = reqwest::Client::new();
    // kube-proxy programs a Service's endpoints a moment after the pods are Ready.
    cluster
        .wait_for(
            "the gateway Service answers",
            Duration::from_secs(60),
            &system_ns,
            || async {
                http.get(format!("{gateway}/readyz"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200)
            },
        )
        .await;
    let answer = stripe_webhook(&http, &ingest, "evt_first")
        .send()
        .await
        .expect("gateway Service answers");
    assert_eq!(answer.status(), 200, "{:?}", answer.text().await);
    let signing: Api<Secret> = Api::namespaced(cluster.client.clone(), &app_ns);
    let generated = signing
        .get("stripe-sink-signing")
        .await
        .expect("generated handler secret");
    let secret = String::from_utf8(generated.data.unwrap()["signing-secret"].0.clone()).unwrap();
    let started = Instant::now();
    let first = loop {
        let records = received(&cluster, &sink_ns).await;
        if let Some(r) = records
            .iter()
            .find(|r| arrivals(std::slice::from_ref(r)).contains_key("evt_first"))
        {
            break r.clone();
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the webhook never reached the sink"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let verifier = SourceVerifier::new(
        Provider::StandardWebhooks,
        None,
        &[secret.trim()],
        Duration::from_secs(300),
    )
    .unwrap();
    let mut headers = http::HeaderMap::new();
    headers.insert("webhook-id", first.id.parse().unwrap());
    headers.insert("webhook-timestamp", first.timestamp.parse().unwrap());
    headers.insert("webhook-signature", first.signature.parse().unwrap());
    verifier
        .verify(&headers, &first.body, now())
        .expect("the delivery verifies per Standard Webhooks with the handler's secret");

    // A gateway pod deleted while 2,000 webhooks are sent.
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(send_load(
        ingest.clone(),
        "evt_kill",
        2000,
        16,
        400.0,
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let victim = cluster
        .pods(&system_ns, "app.kubernetes.io/name=hookline-gateway")
        .await[0]
        .metadata
        .name
        .clone()
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &system_ns);
    pods.delete(&victim, &DeleteParams::default())
        .await
        .expect("delete gateway pod");
    let recovered = cluster
        .wait_for(
            "the gateway back to 2 Ready pods",
            Duration::from_secs(120),
            &system_ns,
            || async {
                let fresh = cluster
                    .pods(&system_ns, "app.kubernetes.io/name=hookline-gateway")
                    .await;
                !fresh
                    .iter()
                    .any(|p| p.metadata.name.as_deref() == Some(victim.as_str()))
                    && cluster.deployment_ready(&system_ns, "hookline-gateway", 2).await
            },
        )
        .await;
    let load = load.await.unwrap();
    figure("pod_delete_recovery_s", recovered.as_secs_f64(), "s");
    figure("pod_delete_acked", load.acked.len() as f64, "webhooks");
    figure("pod_delete_5xx", load.server_errors as f64, "responses");
    figure(
        "pod_delete_connection_errors",
        load.connection_errors as f64,
        "requests",
    );
    assert_eq!(load.other_refusals, 0, "no webhook refused for its content");
    let duplicates = all_delivered(&cluster, &sink_ns, &load.acked, Duration::from_secs(120)).await;
    figure("pod_delete_duplicates", duplicates as f64, "deliveries");

    // helm upgrade with a changed value: the controller rolls, then the gateway, under load.
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(send_load(
        ingest.clone(),
        "evt_roll",
        u64::MAX,
        8,
        100.0,
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut upgrade = vec![
        "upgrade",
        RELEASE,
        chart.as_str(),
        "-n",
        system_ns.as_str(),
        "--wait",
        "--timeout",
        "5m",
    ];
    for value in &values {
        upgrade.extend(["--set", value.as_str()]);
    }
    upgrade.extend(["--set", "gateway.resources.requests.cpu=110m"]);
    let started = Instant::now();
    cluster.run("helm", &upgrade);
    let gateways: Api<Deployment> = Api::namespaced(cluster.client.clone(), &system_ns);
    cluster
        .wait_for(
            "the gateway rolled to the new value",
            Duration::from_secs(180),
            &system_ns,
            || async {
                let rolled = gateways.get("hookline-gateway").await.is_ok_and(|d| {
                    serde_json::to_value(&d).unwrap_or_default()["spec"]["template"]["spec"]["containers"][0]
                        ["resources"]["requests"]["cpu"]
                        == "110m"
                });
                rolled && cluster.deployment_ready(&system_ns, "hookline-gateway", 2).await
            },
        )
        .await;
    figure("helm_upgrade_rollout_s", started.elapsed().as_secs_f64(), "s");
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let load = load.await.unwrap();
    figure("rollout_acked", load.acked.len() as f64, "webhooks");
    figure("rollout_5xx", load.server_errors as f64, "responses");
    figure(
        "rollout_connection_errors",
        load.connection_errors as f64,
        "requests",
    );
    assert!(
        !load.acked.is_empty(),
        "webhooks were acknowledged during the rollout"
    );
    assert_eq!(load.server_errors, 0, "a graceful rollout answers no 5xx");
    let duplicates = all_delivered(&cluster, &sink_ns, &load.acked, Duration::from_secs(120)).await;
    figure("rollout_duplicates", duplicates as f64, "deliveries");
    if duplicates > 0 {
        explain_duplicates(&cluster, &sink_ns, &database_url).await;
    }
    assert_eq!(
        duplicates, 0,
        "a rollout resends nothing that was already answered"
    );

    // Leader failover: the other controller replica takes over within the lease time.
    let leases: Api<Lease> = Api::namespaced(cluster.client.clone(), &system_ns);
    let holder = || async {
        leases
            .get_opt("hookline-controller")
            .await
            .ok()
            .flatten()
            .and_then(|l| l.spec?.holder_identity)
    };
    cluster
        .wait_for(
            "a controller leads",
            Duration::from_secs(60),
            &system_ns,
            || async { holder().await.is_some() },
        )
        .await;
    let leader = holder().await.expect("a leader");
    pods.delete(&leader, &DeleteParams::default())
        .await
        .expect("delete the leader");
    let took_over = cluster
        .wait_for(
            "another replica leads",
            Duration::from_secs(45),
            &system_ns,
            || async { holder().await.is_some_and(|h| h != leader) },
        )
        .await;
    figure("leader_failover_s", took_over.as_secs_f64(), "s");
    assert!(
        took_over < Duration::from_secs(30),
        "failover within the lease time (15 s) and a retry"
    );
    cluster.apply(&format!(
        "apiVersion: hookline.dev/v1alpha1\nkind: WebhookSource\nmetadata: {{name: after-failover, namespace: {app_ns}}}\n\
         spec: {{provider: stripe, secretRef: {{name: stripe-webhook, key: signing-secret}}}}\n"
    ));
    cluster
        .wait_for(
            "status written by the new leader",
            Duration::from_secs(60),
            &app_ns,
            || cluster.ready_condition(&sources, "after-failover"),
        )
        .await;

    // 1,000 subscriptions applied at once.
    let many_ns = namespace(&cluster, "hl-many").await;
    let mut yaml = String::new();
    for i in 0..1000 {
        yaml.push_str(&format!(
            "---\napiVersion: hookline.dev/v1alpha1\nkind: WebhookSubscription\nmetadata: {{name: sub-{i}, namespace: {many_ns}}}\n\
             spec: {{url: '{sink_url}', events: ['never.*'], allowPrivateNetworks: true}}\n"
        ));
    }
    let started = Instant::now();
    cluster.apply(&yaml);
    let subscriptions: Api<hookline::api::WebhookSubscription> =
        Api::namespaced(cluster.client.clone(), &many_ns);
    let all_ready = cluster
        .wait_for(
            "1,000 subscriptions Ready",
            Duration::from_secs(300),
            &many_ns,
            || async {
                subscriptions
                    .list(&ListParams::default())
                    .await
                    .is_ok_and(|list| {
                        list.items.len() == 1000
                            && list.items.iter().all(|s| {
                                s.status.as_ref().is_some_and(|st| {
                                    st.conditions
                                        .iter()
                                        .any(|c| c.type_ == "Ready" && c.status == "True")
                                })
                            })
                    })
            },
        )
        .await;
    figure(
        "subscriptions_1000_ready_s",
        all_ready.max(started.elapsed()).as_secs_f64(),
        "s",
    );
    for role in ["controller", "gateway"] {
        let rss = rss_of(role);
        figure(
            &format!("{role}_rss_mib_max"),
            rss.iter().copied().fold(0.0, f64::max),
            "MiB",
        );
    }

    // Done: the next run starts from nothing.
    clean_up_earlier_runs(&cluster).await;
}

/// The resident memory (MiB) of each `hookline <role>` process on this machine: the pods'
/// processes, seen from the host.
fn rss_of(role: &str) -> Vec<f64> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if args.len() < 2 || !args[0].ends_with(b"hookline") || args[1] != role.as_bytes() {
            continue;
        }
        let status = std::fs::read_to_string(entry.path().join("status")).unwrap_or_default();
        if let Some(kb) = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
        {
            out.push(kb / 1024.0);
        }
    }
    out
}
