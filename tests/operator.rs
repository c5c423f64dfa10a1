//! The operator end to end on the real API server and Postgres from hack/test-env: the
//! controller and a gateway run as processes, configured as the managed Deployment configures
//! the gateway; a platform engineer's view is checked with kubectl.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hookline::api::{Provider, WebhookSource, WebhookSubscription};
use hookline::verify::{SigningKey, SourceVerifier, stripe};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Secret, Service};
use kube::api::DeleteParams;
use kube::{Api, ResourceExt};
use support::sink::{Reply, Sink};

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(args: &[&str], env: &[(&str, &str)]) -> Process {
    let log = std::env::temp_dir().join(format!(
        "hookline-{}-{}.log",
        args[0],
        uuid::Uuid::new_v4().simple()
    ));
    eprintln!("{} log: {}", args[0], log.display());
    let file = std::fs::File::create(&log).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_hookline"));
    command.args(args).stdout(Stdio::null()).stderr(file);
    for (k, v) in env {
        command.env(k, v);
    }
    Process(command.spawn().expect("start hookline"))
}

/// A controller reconciles every namespace, and each test's controller has a database of its
/// own: two at once would each write the other's resources' status from the wrong database.
static ONE_CONTROLLER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn eventually<T>(what: &str, within: Duration, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn condition(
    conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    type_: &str,
) -> Option<(String, String)> {
    conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

fn kubectl(args: &[&str]) -> String {
    let output = Command::new("kubectl")
        .args(args)
        .output()
        .expect("kubectl on PATH (hack/test-env puts it there)");
    assert!(
        output.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

const STRIPE_SECRET: &str = "whsec_e2e_stripe_signing_secret";

#[tokio::test]
async fn operator_end_to_end() {
    let _alone = ONE_CONTROLLER.lock().await;
    let client = support::kube_client().await;
    let system = support::temp_namespace(&client, "hl-system").await;
    let app = support::temp_namespace(&client, "hl-app").await;
    let database_url = support::fresh_database().await;
    let sink = Sink::start().await;
    sink.always("failing", Reply::Status(500));

    let controller_port = support::free_port().to_string();
    let _controller = spawn(
        &[
            "controller",
            "--listen",
            &format!("127.0.0.1:{controller_port}"),
            "--status-interval",
            "1s",
            "--external-base-url",
            "https://hooks.example.test",
            "--gateway-image",
            "hookline:e2e",
        ],
        &[
            ("DATABASE_URL", &database_url),
            ("POD_NAMESPACE", &system),
            ("POD_NAME", "controller-0"),
        ],
    );
    let gateway_port = support::free_port();
    let _gateway = spawn(
        &["gateway", "--listen", &format!("127.0.0.1:{gateway_port}")],
        &[("DATABASE_URL", &database_url), ("POD_NAMESPACE", &system)],
    );

    let yaml = format!(
        r#"
apiVersion: v1
kind: Secret
metadata: {{ name: stripe-webhook }}
stringData: {{ signing-secret: {STRIPE_SECRET}, unrelated: not-for-the-gateway }}
---
apiVersion: v1
kind: Secret
metadata: {{ name: crm-api }}
stringData: {{ token: crm-api-token-from-a-secret }}
---
apiVersion: hookline.dev/v1alpha1
kind: WebhookSource
metadata: {{ name: stripe }}
spec:
  provider: stripe
  secretRef: {{ name: stripe-webhook, key: signing-secret }}
  handlers:
  - {{ name: billing, url: '{billing}', events: ['invoice.*'] }}
---
apiVersion: hookline.dev/v1alpha1
kind: WebhookSubscription
metadata: {{ name: crm }}
spec: {{ url: '{crm}', events: ['invoice.*'], allowPrivateNetworks: true, filter: "data.object.id == 'in_1'",
         ordering: {{ key: data.object.customer }}, format: cloudevents-binary,
         headers: [{{ name: X-Api-Key, valueFrom: {{ secretKeyRef: {{ name: crm-api, key: token }} }} }}] }}
---
apiVersion: hookline.dev/v1alpha1
kind: WebhookSubscription
metadata: {{ name: bad-filter }}
spec: {{ url: '{crm}', events: ['*'], allowPrivateNetworks: true, filter: "data.object.amount_paid >" }}
---
apiVersion: hookline.dev/v1alpha1
kind: WebhookSubscription
metadata: {{ name: bad-ca }}
spec: {{ url: 'https://crm.example.test/hooks', events: ['*'], tls: {{ caBundleRef: {{ name: crm-api, key: token }} }} }}
---
apiVersion: hookline.dev/v1alpha1
kind: WebhookSubscription
metadata: {{ name: failing }}
spec:
  url: '{failing}'
  events: ['invoice.*']
  allowPrivateNetworks: true
  retryPolicy: {{ maxAttempts: 50, schedule: [200ms] }}
  circuitBreaker: {{ failureThreshold: 2, resetTimeout: 10m }}
---
apiVersion: hookline.dev/v1alpha1
kind: WebhookSubscription
metadata: {{ name: private-without-opt-in }}
spec: {{ url: 'http://crm.internal.svc/hooks', events: ['*'] }}
"#,
        billing = sink.url("billing"),
        crm = sink.url("crm"),
        failing = sink.url("failing"),
    );
    support::apply_yaml(&client, &app, &yaml)
        .await
        .expect("apply the resources");

    let sources: Api<WebhookSource> = Api::namespaced(client.clone(), &app);
    let subscriptions: Api<WebhookSubscription> = Api::namespaced(client.clone(), &app);
    let source = eventually("the source to be Ready", Duration::from_secs(60), async || {
        let s = sources.get("stripe").await.ok()?;
        let status = s.status.clone()?;
        (condition(&status.conditions, "Ready")?.0 == "True"
            && status.handlers[0].health.generated_secret_name.is_some())
        .then_some(s)
    })
    .await;
    let status = source.status.clone().unwrap();
    assert_eq!(
        status.url.as_deref(),
        Some(format!("https://hooks.example.test/ingest/{app}/stripe").as_str())
    );
    assert_eq!(condition(&status.conditions, "SecretResolved").unwrap().0, "True");
    for name in ["crm", "failing"] {
        eventually(
            &format!("subscription {name} Ready"),
            Duration::from_secs(30),
            async || {
                let s = subscriptions.get(name).await.ok()?;
                let status = s.status?;
                (condition(&status.conditions, "Ready")?.0 == "True"
                    && status.health.generated_secret_name.is_some())
                .then_some(())
            },
        )
        .await;
    }
    let refused = eventually(
        "the private URL to be refused",
        Duration::from_secs(30),
        async || {
            let status = subscriptions.get("private-without-opt-in").await.ok()?.status?;
            condition(&status.conditions, "Ready").filter(|(s, _)| s == "False")
        },
    )
    .await;
    assert_eq!(refused.1, "PrivateNetworkNotAllowed");
    // A filter that does not compile: Ready=False with the compiler's message, in describe.
    let described = eventually(
        "bad-filter to be ExpressionInvalid",
        Duration::from_secs(30),
        async || {
            let text = kubectl(&["describe", "whsub", "bad-filter", "-n", &app]);
            text.contains("ExpressionInvalid").then_some(text)
        },
    )
    .await;
    assert!(described.contains("filter: ERROR: <input>:1:"), "{described}");
    // A CA bundle that holds no certificate: the controller reads it as the gateway will.
    let bad_ca = eventually(
        "bad-ca to be SecretInvalid",
        Duration::from_secs(30),
        async || {
            let status = subscriptions.get("bad-ca").await.ok()?.status?;
            condition(&status.conditions, "SecretResolved").filter(|(s, _)| s == "False")
        },
    )
    .await;
    assert_eq!(bad_ca.1, "SecretInvalid");
    let described = kubectl(&["describe", "whsub", "bad-ca", "-n", &app]);
    assert!(
        described.contains("tls CA bundle: Secret") && described.contains("holds no PEM certificate"),
        "{described}"
    );

    // A Stripe-signed invoice.paid through the gateway (retried until the gateway has seen the
    // mirrored secret).
    let http = reqwest::Client::new();
    let body = r#"{"id":"evt_e2e_1","object":"event","type":"invoice.paid","data":{"object":{"id":"in_1"}}}"#;
    let key = SigningKey::from_text(STRIPE_SECRET).unwrap();
    let ingest = format!("http://127.0.0.1:{gateway_port}/ingest/{app}/stripe");
    eventually(
        "the gateway to accept the event",
        Duration::from_secs(30),
        async || {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
            let response = http
                .post(&ingest)
                .header("Stripe-Signature", stripe::sign(&key, now, body.as_bytes()))
                .body(body)
                .send()
                .await
                .ok()?;
            (response.status() == 200).then_some(())
        },
    )
    .await;

    // Only the referenced key left the app's namespace: one mirror per key.
    let mirrors = Api::<Secret>::namespaced(client.clone(), &system)
        .list(&kube::api::ListParams::default().labels("hookline.dev/mirror=true"))
        .await
        .unwrap();
    let copied = mirrors
        .iter()
        .find(|m| {
            m.annotations()
                .get("hookline.dev/source-name")
                .map(String::as_str)
                == Some("stripe-webhook")
        })
        .expect("the source's Secret is mirrored");
    let keys: Vec<&String> = copied.data.as_ref().unwrap().keys().collect();
    assert_eq!(keys, ["signing-secret"], "the unrelated key stays in {app}");

    // The handler receives it, signed with the secret the controller generated for it.
    let got = sink.wait_for("billing", 1, Duration::from_secs(30)).await;
    assert_eq!(got[0].body.as_ref(), body.as_bytes());
    let generated = status.handlers[0].health.generated_secret_name.clone().unwrap();
    let secret = Api::<Secret>::namespaced(client.clone(), &app)
        .get(&generated)
        .await
        .unwrap();
    let value = String::from_utf8(
        secret.data.unwrap()[hookline::api::GENERATED_SECRET_KEY]
            .0
            .clone(),
    )
    .unwrap();
    let verifier = SourceVerifier::new(
        Provider::StandardWebhooks,
        None,
        &[value.as_str()],
        Duration::from_secs(300),
    )
    .unwrap();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    verifier
        .verify(&got[0].headers, &got[0].body, now)
        .expect("the handler can verify the delivery");
    let crm = sink.wait_for("crm", 1, Duration::from_secs(30)).await;
    assert_eq!(
        crm[0].header("ce-source"),
        format!("/namespaces/{app}/sources/stripe"),
        "a CloudEvent"
    );
    assert_eq!(
        crm[0].header("x-api-key"),
        "crm-api-token-from-a-secret",
        "the header from a Secret, mirrored"
    );
    // The invoice has no customer: its key fails, it goes unordered, and the status says so.
    eventually(
        "crm's status to count the unordered delivery",
        Duration::from_secs(30),
        async || {
            let status = subscriptions.get("crm").await.ok()?.status?;
            let deliveries = status.health.deliveries?;
            (deliveries.unordered == Some(1) && deliveries.blocked_keys == Some(0)).then_some(())
        },
    )
    .await;

    // kubectl alone tells the story.
    let listing = kubectl(&["get", "whsrc,whsub", "-n", &app]);
    assert!(
        listing.contains("stripe") && listing.contains("True"),
        "{listing}"
    );
    let described = eventually(
        "status.received to count the event",
        Duration::from_secs(30),
        async || {
            let text = kubectl(&["describe", "webhooksource", "stripe", "-n", &app]);
            text.contains("Received:").then_some(()).and_then(|_| {
                text.lines()
                    .any(|l| l.trim_start().starts_with("Received:") && l.trim_end().ends_with(" 1"))
                    .then_some(text)
            })
        },
    )
    .await;
    assert!(
        described.contains(&format!("https://hooks.example.test/ingest/{app}/stripe")),
        "{described}"
    );

    // The failing subscription's circuit opens: Healthy=False (CircuitOpen), with an Event.
    eventually(
        "failing to turn Healthy=False with CircuitOpen",
        Duration::from_secs(60),
        async || {
            let status = subscriptions.get("failing").await.ok()?.status?;
            (condition(&status.conditions, "Healthy")? == ("False".into(), "CircuitOpen".into()))
                .then_some(())
        },
    )
    .await;
    let described = eventually("the CircuitOpened event", Duration::from_secs(30), async || {
        let text = kubectl(&["describe", "whsub", "failing", "-n", &app]);
        text.contains("CircuitOpened").then_some(text)
    })
    .await;
    assert!(
        described.contains("Circuit:") && described.contains("open"),
        "{described}"
    );

    // The managed gateway exists as specified.
    let deployment = Api::<Deployment>::namespaced(client.clone(), &system)
        .get("hookline-gateway")
        .await
        .expect("gateway Deployment");
    let container = &deployment
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0];
    assert_eq!(container.image.as_deref(), Some("hookline:e2e"));
    assert_eq!(container.args.as_ref().unwrap()[0], "gateway");
    Api::<Service>::namespaced(client.clone(), &system)
        .get("hookline-gateway")
        .await
        .expect("gateway Service");
    // Deleted, it comes back.
    Api::<Deployment>::namespaced(client.clone(), &system)
        .delete("hookline-gateway", &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        "the Deployment to be recreated",
        Duration::from_secs(30),
        async || {
            Api::<Deployment>::namespaced(client.clone(), &system)
                .get_opt("hookline-gateway")
                .await
                .ok()
                .flatten()
        },
    )
    .await;

    // Deleting the subscription cancels what still waits for it (the open circuit holds it).
    subscriptions
        .delete("failing", &DeleteParams::default())
        .await
        .unwrap();
    let pool = sqlx::PgPool::connect(&database_url).await.unwrap();
    eventually(
        "pending deliveries to be cancelled",
        Duration::from_secs(30),
        async || {
            let statuses: Vec<String> =
                sqlx::query_scalar("SELECT status FROM delivery_states WHERE target = 'failing'")
                    .fetch_all(&pool)
                    .await
                    .ok()?;
            (!statuses.is_empty() && statuses.iter().all(|s| s == "cancelled")).then_some(())
        },
    )
    .await;
    eventually(
        "the subscription to be gone",
        Duration::from_secs(30),
        async || {
            subscriptions
                .get_opt("failing")
                .await
                .ok()?
                .is_none()
                .then_some(())
        },
    )
    .await;
}

/// Leader election on a real Lease: one holder at a time; another takes over once it expires.
#[tokio::test]
async fn only_one_controller_leads() {
    use hookline::controller::leader::LeaderElection;
    let client = support::kube_client().await;
    let ns = support::temp_namespace(&client, "hl-lease").await;
    let lease = Duration::from_secs(2);
    let a = LeaderElection::new(client.clone(), &ns, "hookline-controller", "replica-a", lease);
    let b = LeaderElection::new(client.clone(), &ns, "hookline-controller", "replica-b", lease);
    assert!(
        a.try_acquire().await.unwrap(),
        "the first replica takes the free lease"
    );
    assert!(
        !b.try_acquire().await.unwrap(),
        "the second waits while the lease is held"
    );
    assert!(a.try_acquire().await.unwrap(), "the holder renews");
    tokio::time::sleep(lease + Duration::from_millis(1500)).await;
    assert!(b.try_acquire().await.unwrap(), "an expired lease is taken over");
    assert!(!a.try_acquire().await.unwrap(), "the old holder has lost it");
}

/// Secrets appearing late, deletions, and a user's autoscaler.
#[tokio::test]
async fn operator_follows_secrets_deletions_and_autoscalers() {
    let _alone = ONE_CONTROLLER.lock().await;
    let client = support::kube_client().await;
    let system = support::temp_namespace(&client, "hl-system").await;
    let app = support::temp_namespace(&client, "hl-app").await;
    let database_url = support::fresh_database().await;
    let _controller = spawn(
        &[
            "controller",
            "--listen",
            &format!("127.0.0.1:{}", support::free_port()),
            "--status-interval",
            "1s",
            "--no-leader-election",
        ],
        &[("DATABASE_URL", &database_url), ("POD_NAMESPACE", &system)],
    );
    let gateway_port = support::free_port();
    let _gateway = spawn(
        &["gateway", "--listen", &format!("127.0.0.1:{gateway_port}")],
        &[("DATABASE_URL", &database_url), ("POD_NAMESPACE", &system)],
    );

    // A source whose Secret does not exist yet: not Ready, an Event says why, ingest answers 503.
    let source_yaml = "apiVersion: hookline.dev/v1alpha1\nkind: WebhookSource\nmetadata: { name: gh }\n\
                       spec: { provider: github, secretRef: { name: gh-secret, key: token } }\n";
    support::apply_yaml(&client, &app, source_yaml).await.unwrap();
    let sources: Api<WebhookSource> = Api::namespaced(client.clone(), &app);
    let (_, reason) = eventually("SecretResolved=False", Duration::from_secs(30), async || {
        let status = sources.get("gh").await.ok()?.status?;
        condition(&status.conditions, "SecretResolved").filter(|(s, _)| s == "False")
    })
    .await;
    assert_eq!(reason, "SecretNotFound");
    eventually("the SecretMissing event", Duration::from_secs(30), async || {
        kubectl(&["describe", "whsrc", "gh", "-n", &app])
            .contains("SecretMissing")
            .then_some(())
    })
    .await;
    let http = reqwest::Client::new();
    let ingest = format!("http://127.0.0.1:{gateway_port}/ingest/{app}/gh");
    let body = r#"{"zen":"Keep it logically awesome."}"#;
    let key = SigningKey::from_text("gh-token-value").unwrap();
    let send = || {
        http.post(&ingest)
            .header(
                "X-Hub-Signature-256",
                hookline::verify::sign_github(&key, body.as_bytes()),
            )
            .header("X-GitHub-Delivery", "d-1")
            .header("X-GitHub-Event", "ping")
            .body(body)
            .send()
    };
    eventually(
        "503 while the secret is missing",
        Duration::from_secs(30),
        async || (send().await.ok()?.status() == 503).then_some(()),
    )
    .await;

    // The Secret arrives: Ready within moments, and the gateway accepts.
    let secret_yaml = "apiVersion: v1\nkind: Secret\nmetadata: { name: gh-secret }\nstringData: { token: gh-token-value }\n";
    support::apply_yaml(&client, &app, secret_yaml).await.unwrap();
    eventually(
        "Ready=True once the secret exists",
        Duration::from_secs(30),
        async || {
            let status = sources.get("gh").await.ok()?.status?;
            (condition(&status.conditions, "Ready")?.0 == "True").then_some(())
        },
    )
    .await;
    eventually("the gateway to accept", Duration::from_secs(30), async || {
        (send().await.ok()?.status() == 200).then_some(())
    })
    .await;

    // Deleting the source stops its ingest; its history stays.
    sources.delete("gh", &DeleteParams::default()).await.unwrap();
    eventually("404 after deletion", Duration::from_secs(30), async || {
        (send().await.ok()?.status() == 404).then_some(())
    })
    .await;
    let pool = sqlx::PgPool::connect(&database_url).await.unwrap();
    let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE source = 'gh'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(kept, 1, "the history of a deleted source is kept");

    // Drift is corrected, but replicas belong to an autoscaler when there is one.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &system);
    let replicas = async || {
        deployments
            .get_opt("hookline-gateway")
            .await
            .ok()
            .flatten()?
            .spec?
            .replicas
    };
    eventually("the managed Deployment", Duration::from_secs(30), async || {
        replicas().await
    })
    .await;
    let scale = |n: i32| serde_json::json!({"spec": {"replicas": n}});
    let by_hand = kube::api::PatchParams::default();
    deployments
        .patch("hookline-gateway", &by_hand, &kube::api::Patch::Merge(scale(7)))
        .await
        .unwrap();
    eventually("replicas set back to 2", Duration::from_secs(30), async || {
        (replicas().await? == 2).then_some(())
    })
    .await;
    let hpa = "apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata: { name: gateway }\n\
               spec: { scaleTargetRef: { apiVersion: apps/v1, kind: Deployment, name: hookline-gateway }, \
               minReplicas: 2, maxReplicas: 10 }\n";
    support::apply_yaml(&client, &system, hpa).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    deployments
        .patch("hookline-gateway", &by_hand, &kube::api::Patch::Merge(scale(5)))
        .await
        .unwrap();
    // The patch itself triggers a re-apply; give it time to (not) reset the replicas.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        replicas().await,
        Some(5),
        "the autoscaler's replicas are left alone"
    );
}

/// A TCP relay to the test API server that can be cut: from then on it forwards nothing and
/// answers nothing (connections hang, as to a server that went away behind a load balancer).
struct Relay {
    port: u16,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Relay {
    async fn to(upstream: std::net::SocketAddr) -> Self {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = cut.clone();
        tokio::spawn(async move {
            let mut hanging = Vec::new();
            while let Ok((mut client, _)) = listener.accept().await {
                if flag.load(Ordering::Relaxed) {
                    hanging.push(client);
                    continue;
                }
                let flag = flag.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let copy = tokio::io::copy_bidirectional(&mut client, &mut server);
                    let cut = async {
                        while !flag.load(Ordering::Relaxed) {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    };
                    tokio::select! {
                        _ = copy => {}
                        _ = cut => {
                            // The client's connection stays open and silent.
                            drop(server);
                            std::future::pending::<()>().await;
                        }
                    }
                });
            }
        });
        Self { port, cut }
    }

    fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The test kubeconfig, pointing at `port` on 127.0.0.1 instead of the API server.
fn kubeconfig_via(port: u16) -> std::path::PathBuf {
    let original = std::fs::read_to_string(std::env::var("KUBECONFIG").unwrap()).unwrap();
    let rewritten: String = original
        .lines()
        .map(
            |line| match line.trim_start().strip_prefix("server: https://127.0.0.1:") {
                Some(_) => format!("    server: https://127.0.0.1:{port}\n"),
                None => format!("{line}\n"),
            },
        )
        .collect();
    let path = std::env::temp_dir().join(format!(
        "hookline-relay-{}.kubeconfig",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::write(&path, rewritten).unwrap();
    path
}

fn api_server_address() -> std::net::SocketAddr {
    let config = std::fs::read_to_string(std::env::var("KUBECONFIG").unwrap()).unwrap();
    let port = config
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("server: https://127.0.0.1:"))
        .expect("the test API server is on 127.0.0.1");
    format!("127.0.0.1:{}", port.trim()).parse().unwrap()
}

/// SIGTERM stops the leading controller promptly, releasing its Lease when the API server
/// answers, and within seconds when it does not.
#[tokio::test]
async fn a_stopped_controller_exits_promptly_and_releases_its_lease() {
    let _alone = ONE_CONTROLLER.lock().await;
    let client = support::kube_client().await;
    let system = support::temp_namespace(&client, "hl-system").await;
    let database_url = support::fresh_database().await;
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(client.clone(), &system);
    for api_server_gone in [false, true] {
        let relay = Relay::to(api_server_address()).await;
        let kubeconfig = kubeconfig_via(relay.port);
        let identity = format!("controller-{api_server_gone}");
        let mut controller = spawn(
            &[
                "controller",
                "--listen",
                &format!("127.0.0.1:{}", support::free_port()),
                "--no-managed-gateway",
            ],
            &[
                ("DATABASE_URL", &database_url),
                ("POD_NAMESPACE", &system),
                ("POD_NAME", &identity),
                ("KUBECONFIG", kubeconfig.to_str().unwrap()),
            ],
        );
        eventually(
            &format!("{identity} leads"),
            Duration::from_secs(60),
            async || {
                let lease = leases.get_opt("hookline-controller").await.ok()??;
                (lease.spec?.holder_identity? == identity).then_some(())
            },
        )
        .await;
        if api_server_gone {
            relay.cut();
            // The relay notices within 50 ms; the controller must not get a word through first.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        // SAFETY: sends a signal to the child this test started.
        assert_eq!(
            unsafe { libc::kill(controller.0.id() as libc::pid_t, libc::SIGTERM) },
            0
        );
        let stopping = Instant::now();
        let exit = loop {
            if let Some(status) = controller.0.try_wait().unwrap() {
                break status;
            }
            assert!(
                stopping.elapsed() < Duration::from_secs(15),
                "the controller exits within 15 s of SIGTERM (API server gone: {api_server_gone})"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(exit.success(), "a clean exit: {exit:?}");
        eprintln!(
            "controller exited {:?} after SIGTERM (API server gone: {api_server_gone})",
            stopping.elapsed()
        );
        let holder = leases
            .get("hookline-controller")
            .await
            .unwrap()
            .spec
            .and_then(|s| s.holder_identity);
        if api_server_gone {
            assert_eq!(
                holder.as_deref(),
                Some(identity.as_str()),
                "unreleased: it expires by itself"
            );
        } else {
            assert_eq!(holder, None, "the lease is given up at once for a successor");
        }
        let _ = std::fs::remove_file(kubeconfig);
    }
    support::delete_namespace(&client, &system).await;
}

/// With --watch-namespaces the controller reconciles only those namespaces: a source elsewhere
/// gets no finalizer and no status, and its Secrets are not read or mirrored.
#[tokio::test]
async fn the_controller_reconciles_only_the_watched_namespaces() {
    let _alone = ONE_CONTROLLER.lock().await;
    let client = support::kube_client().await;
    let system = support::temp_namespace(&client, "hl-system").await;
    let watched = support::temp_namespace(&client, "hl-watched").await;
    let ignored = support::temp_namespace(&client, "hl-ignored").await;
    let database_url = support::fresh_database().await;
    let port = support::free_port().to_string();
    let _controller = spawn(
        &[
            "controller",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--status-interval",
            "1s",
            "--no-managed-gateway",
            "--watch-namespaces",
            &watched,
        ],
        &[
            ("DATABASE_URL", &database_url),
            ("POD_NAMESPACE", &system),
            ("POD_NAME", "controller-0"),
        ],
    );
    let yaml = "apiVersion: v1\nkind: Secret\nmetadata: { name: gh }\nstringData: { token: gh-token-value }\n---\n\
                apiVersion: hookline.dev/v1alpha1\nkind: WebhookSource\nmetadata: { name: github }\n\
                spec: { provider: github, secretRef: { name: gh, key: token } }\n";
    for namespace in [&watched, &ignored] {
        support::apply_yaml(&client, namespace, yaml).await.unwrap();
    }
    let sources = |namespace: &str| Api::<WebhookSource>::namespaced(client.clone(), namespace);
    eventually(
        "the watched source to be Ready",
        Duration::from_secs(30),
        async || {
            let status = sources(&watched).get("github").await.ok()?.status?;
            condition(&status.conditions, "Ready").filter(|(s, _)| s == "True")
        },
    )
    .await;
    // Several reconciles of the watched one later, the other is untouched.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let other = sources(&ignored).get("github").await.unwrap();
    assert!(other.status.is_none(), "no status outside the watched namespaces");
    assert!(
        other.finalizers().is_empty(),
        "no finalizer outside the watched namespaces"
    );
    let mirrors = Api::<Secret>::namespaced(client.clone(), &system)
        .list(&kube::api::ListParams::default().labels("hookline.dev/mirror=true"))
        .await
        .unwrap();
    let origins: Vec<String> = mirrors
        .iter()
        .filter_map(|m| m.annotations().get("hookline.dev/source-namespace").cloned())
        .collect();
    assert_eq!(
        origins,
        std::slice::from_ref(&watched),
        "only the watched namespace's key is mirrored"
    );
    for namespace in [&system, &watched, &ignored] {
        support::delete_namespace(&client, namespace).await;
    }
}

/// A WebhookReplay on the real API server: of 1,000 stored events, a sub-window with a filter
/// is sent to a subscription, exactly the matching ones, and its status counts them; a slow
/// replay deleted midway enqueues nothing more.
#[tokio::test]
async fn a_webhook_replay_sends_a_filtered_sub_window_and_stops_when_deleted() {
    use hookline::api::WebhookReplay;
    let _alone = ONE_CONTROLLER.lock().await;
    let client = support::kube_client().await;
    let system = support::temp_namespace(&client, "hl-system").await;
    let app = support::temp_namespace(&client, "hl-replay").await;
    let database_url = support::fresh_database().await;
    let sink = Sink::start().await;
    let controller_port = support::free_port().to_string();
    let _controller = spawn(
        &[
            "controller",
            "--listen",
            &format!("127.0.0.1:{controller_port}"),
            "--status-interval",
            "1s",
            "--no-managed-gateway",
        ],
        &[
            ("DATABASE_URL", &database_url),
            ("POD_NAMESPACE", &system),
            ("POD_NAME", "controller-0"),
        ],
    );
    let gateway_port = support::free_port();
    let _gateway = spawn(
        &["gateway", "--listen", &format!("127.0.0.1:{gateway_port}")],
        &[("DATABASE_URL", &database_url), ("POD_NAMESPACE", &system)],
    );
    let subscriptions = format!(
        r#"
apiVersion: hookline.dev/v1alpha1
kind: WebhookSubscription
metadata: {{ name: ledger }}
spec: {{ url: '{ledger}', events: ['order.*'], allowPrivateNetworks: true }}
---
apiVersion: hookline.dev/v1alpha1
kind: WebhookSubscription
metadata: {{ name: slow }}
spec: {{ url: '{slow}', events: ['order.*'], allowPrivateNetworks: true }}
"#,
        ledger = sink.url("ledger"),
        slow = sink.url("slow"),
    );
    support::apply_yaml(&client, &app, &subscriptions)
        .await
        .expect("apply the subscriptions");
    // 1,000 events stored over the last 1,000 minutes, one a minute, before either subscription
    // had deliveries: only a replay sends them.
    let pool = sqlx::PgPool::connect(&database_url).await.unwrap();
    // The processes may not have prepared the database yet (migrations take a lock: no race).
    hookline::store::migrate(&pool).await.expect("migrate");
    let start = chrono::Utc::now() - chrono::Duration::minutes(1000);
    sqlx::query(&format!(
        "INSERT INTO events (id, namespace, source, external_id, event_type, headers, body, received_at)
         SELECT {}, $1, '', 'evt-' || n, 'order.created', '{{\"content-type\": \"application/json\"}}',
                convert_to(json_build_object('type', 'order.created', 'data', json_build_object('n', n))::text, 'UTF8'),
                $2 + n * interval '1 minute'
         FROM generate_series(0, 999) AS n",
        support::sql_id_at("clock_timestamp()")
    ))
    .bind(&app)
    .bind(start)
    .execute(&pool)
    .await
    .unwrap();
    let at = |minute: i64| (start + chrono::Duration::minutes(minute)).to_rfc3339();
    let replays: Api<WebhookReplay> = Api::namespaced(client.clone(), &app);
    let replay = format!(
        r#"
apiVersion: hookline.dev/v1alpha1
kind: WebhookReplay
metadata: {{ name: even-orders }}
spec:
  target: {{ subscription: ledger }}
  from: '{from}'
  to: '{to}'
  filter: "data.n % 2 == 0"
  rate: 1000
"#,
        from = at(200),
        to = at(700),
    );
    support::apply_yaml(&client, &app, &replay)
        .await
        .expect("apply the replay");
    let expected: Vec<u64> = (200..700).filter(|n| n % 2 == 0).collect();
    let received = sink
        .wait_for("ledger", expected.len(), Duration::from_secs(60))
        .await;
    let done = eventually("the replay to be Complete", Duration::from_secs(60), async || {
        let status = replays.get("even-orders").await.ok()?.status?;
        (condition(&status.conditions, "Complete")?.0 == "True").then_some(status)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut numbers: Vec<u64> = sink
        .received("ledger")
        .iter()
        .map(|r| {
            serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()["data"]["n"]
                .as_u64()
                .unwrap()
        })
        .collect();
    numbers.sort();
    assert_eq!(
        numbers,
        expected,
        "exactly the even events of the sub-window ({} received)",
        received.len()
    );
    assert_eq!(
        (done.matched, done.enqueued, done.delivered, done.failed),
        (250, 250, 250, 0),
        "{done:?}"
    );
    assert_eq!(done.target.as_deref(), Some("subscription/ledger"));
    let listing = kubectl(&["get", "whreplay", "-n", &app]);
    assert!(
        listing.contains("even-orders") && listing.contains("subscription/ledger") && listing.contains("250"),
        "{listing}"
    );
    let described = kubectl(&["describe", "whreplay", "even-orders", "-n", &app]);
    assert!(described.contains("ReplayComplete"), "{described}");
    // The new fields explain themselves.
    for (field, says) in [
        ("whreplay.spec.statuses", "Only events whose delivery"),
        ("whsub.spec.filter", "A CEL expression that"),
        ("whsub.spec.ordering.onDead", "What a delivery that"),
        ("whsub.spec.format", "How deliveries are framed"),
        ("whsub.spec.tls", "TLS to the endpoint beyond"),
        ("whsub.spec.auth.oauth2", "An OAuth2 access token"),
        ("whsub.spec.headers", "Request headers sent with every delivery"),
    ] {
        let explained = kubectl(&["explain", field]);
        assert!(explained.contains(says), "kubectl explain {field}: {explained}");
    }

    // A slow replay of the whole window, deleted after a few batches: nothing more goes out.
    let slow = format!(
        "apiVersion: hookline.dev/v1alpha1\nkind: WebhookReplay\nmetadata: {{ name: everything }}\n\
         spec: {{ target: {{ subscription: slow }}, from: '{}', to: '{}', rate: 20 }}\n",
        at(0),
        at(1000),
    );
    support::apply_yaml(&client, &app, &slow)
        .await
        .expect("apply the slow replay");
    sink.wait_for("slow", 40, Duration::from_secs(30)).await;
    replays
        .delete("everything", &DeleteParams::default())
        .await
        .expect("delete the replay");
    eventually("the replay to be gone", Duration::from_secs(30), async || {
        replays.get_opt("everything").await.ok()?.is_none().then_some(())
    })
    .await;
    let count = async || -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM deliveries WHERE target = 'slow'")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    let after_delete = count().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(count().await, after_delete, "nothing enqueued after the deletion");
    assert!(after_delete < 1000, "stopped midway: {after_delete} of 1000");
    pool.close().await;
    support::delete_namespace(&client, &app).await;
    support::delete_namespace(&client, &system).await;
}
