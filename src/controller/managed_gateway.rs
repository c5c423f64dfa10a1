//! The gateway the controller runs: a Deployment and a Service in the controller's namespace,
//! applied server-side and re-applied when deleted or changed. Replicas are left to a
//! HorizontalPodAutoscaler when one targets the Deployment.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Service;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::watcher;
use kube::{Api, Client};
use serde_json::{Value, json};

use super::secrets::FIELD_MANAGER;
use crate::catalog::egress::EgressRules;

pub const NAME: &str = "hookline-gateway";

/// How the managed gateway runs (from the controller's flags; the Helm chart sets them).
#[derive(Clone, Debug)]
pub struct GatewaySettings {
    pub image: String,
    /// The container's imagePullPolicy; Kubernetes' default for the tag when `None`.
    pub image_pull_policy: Option<String>,
    /// Arguments added after the ones the controller sets.
    pub extra_args: Vec<String>,
    pub replicas: i32,
    pub service_type: String,
    pub service_account: String,
    /// Secret and key holding DATABASE_URL.
    pub database_secret: (String, String),
    /// Secret and key holding the publish token, when publishing is enabled.
    pub publish_token_secret: Option<(String, String)>,
    /// Secret and key holding the admin token (admin API and console), when enabled.
    pub admin_token_secret: Option<(String, String)>,
    /// Secret and key of the namespace-scoped publish tokens file, when there is one.
    pub publish_tokens_secret: Option<(String, String)>,
    /// Secret and key of the namespace-scoped admin tokens file, when there is one.
    pub admin_tokens_secret: Option<(String, String)>,
    /// Container resources as JSON (`{"requests": {...}, "limits": {...}}`).
    pub resources: Value,
    /// The operator's egress ranges, passed to the gateway as flags.
    pub egress: EgressRules,
    /// The namespaces the gateway serves (the controller's own); every one when empty.
    pub watch_namespaces: Vec<String>,
    /// OpenTelemetry settings (`OTEL_*` variables, the controller's own) the gateway runs with.
    pub otel_env: Vec<(String, String)>,
}

fn labels() -> BTreeMap<&'static str, &'static str> {
    BTreeMap::from([
        ("app.kubernetes.io/name", NAME),
        ("app.kubernetes.io/component", "gateway"),
        ("app.kubernetes.io/managed-by", "hookline-controller"),
    ])
}

/// The pod's grace period after SIGTERM: unready for SHUTDOWN_DELAY (the Service's endpoints and
/// kube-proxy catch up) while still serving, then up to DRAIN_TIMEOUT for deliveries being sent.
const TERMINATION_GRACE_SECONDS: i64 = 30;
const SHUTDOWN_DELAY: &str = "5s";
const DRAIN_TIMEOUT: &str = "20s";

pub fn deployment(namespace: &str, settings: &GatewaySettings, with_replicas: bool) -> Value {
    let selector = json!({"app.kubernetes.io/name": NAME});
    let secret_env = |name: &str, (secret, key): &(String, String)| json!({"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}});
    let mut env = vec![
        json!({"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}),
        secret_env("DATABASE_URL", &settings.database_secret),
    ];
    if let Some(token) = &settings.publish_token_secret {
        env.push(secret_env("HOOKLINE_PUBLISH_TOKEN", token));
    }
    if let Some(token) = &settings.admin_token_secret {
        env.push(secret_env("HOOKLINE_ADMIN_TOKEN", token));
    }
    for (name, value) in &settings.otel_env {
        env.push(json!({"name": name, "value": value}));
    }
    let mut args: Vec<&str> = vec![
        "gateway",
        "--listen",
        "0.0.0.0:8080",
        // The admin API, console and metrics on a port of their own (the chart's NetworkPolicy
        // lets only operators' namespaces reach it; its Ingress routes the public one).
        "--admin-listen",
        "0.0.0.0:9090",
        "--shutdown-delay",
        SHUTDOWN_DELAY,
        "--drain-timeout",
        DRAIN_TIMEOUT,
    ];
    // Token files are Secrets mounted read-only, one key each.
    let mut volumes = Vec::new();
    let mut mounts = Vec::new();
    let mut file_args = Vec::new();
    for (flag, volume, secret) in [
        (
            "--publish-tokens-file",
            "publish-tokens",
            &settings.publish_tokens_secret,
        ),
        (
            "--admin-tokens-file",
            "admin-tokens",
            &settings.admin_tokens_secret,
        ),
    ] {
        let Some((name, key)) = secret else { continue };
        volumes.push(json!({"name": volume, "secret": {"secretName": name, "items": [{"key": key, "path": "tokens"}]}}));
        mounts
            .push(json!({"name": volume, "mountPath": format!("/etc/hookline/{volume}"), "readOnly": true}));
        file_args.push(format!("{flag}=/etc/hookline/{volume}/tokens"));
    }
    // The gateway enforces the same egress ranges the controller reports in status.
    for (flag, ranges) in [
        ("--egress-deny", &settings.egress.deny),
        ("--egress-allow", &settings.egress.allow),
    ] {
        if !ranges.is_empty() {
            let list: Vec<String> = ranges.iter().map(ToString::to_string).collect();
            file_args.push(format!("{flag}={}", list.join(",")));
        }
    }
    if !settings.watch_namespaces.is_empty() {
        file_args.push(format!(
            "--watch-namespaces={}",
            settings.watch_namespaces.join(",")
        ));
    }
    args.extend(file_args.iter().map(String::as_str));
    args.extend(settings.extra_args.iter().map(String::as_str));
    let mut spec = json!({
        "selector": {"matchLabels": selector},
        "template": {
            "metadata": {"labels": labels()},
            "spec": {
                "serviceAccountName": settings.service_account,
                "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
                "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [{
                    "name": "gateway",
                    "image": settings.image,
                    "args": args,
                    "env": env,
                    "ports": [{"name": "http", "containerPort": 8080}, {"name": "admin", "containerPort": 9090}],
                    "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 5},
                    "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 10},
                    "resources": settings.resources,
                    "securityContext": {
                        "allowPrivilegeEscalation": false,
                        "readOnlyRootFilesystem": true,
                        "capabilities": {"drop": ["ALL"]},
                    },
                }],
            },
        },
    });
    if with_replicas {
        spec["replicas"] = json!(settings.replicas);
    }
    if !volumes.is_empty() {
        spec["template"]["spec"]["volumes"] = json!(volumes);
        spec["template"]["spec"]["containers"][0]["volumeMounts"] = json!(mounts);
    }
    if let Some(policy) = &settings.image_pull_policy {
        spec["template"]["spec"]["containers"][0]["imagePullPolicy"] = json!(policy);
    }
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": NAME, "namespace": namespace, "labels": labels()},
        "spec": spec,
    })
}

pub fn service(namespace: &str, settings: &GatewaySettings) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": NAME, "namespace": namespace, "labels": labels()},
        "spec": {
            "type": settings.service_type,
            "selector": {"app.kubernetes.io/name": NAME},
            "ports": [
                {"name": "http", "port": 80, "targetPort": "http"},
                {"name": "admin", "port": 9090, "targetPort": "admin"},
            ],
        },
    })
}

/// True when a HorizontalPodAutoscaler scales the gateway Deployment.
async fn autoscaled(client: &Client, namespace: &str) -> bool {
    let api: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), namespace);
    match api.list(&ListParams::default()).await {
        Ok(list) => list.items.iter().any(|hpa| {
            hpa.spec
                .as_ref()
                .is_some_and(|s| s.scale_target_ref.kind == "Deployment" && s.scale_target_ref.name == NAME)
        }),
        Err(_) => false,
    }
}

pub async fn apply(client: &Client, namespace: &str, settings: &GatewaySettings) -> Result<(), kube::Error> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let with_replicas = !autoscaled(client, namespace).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    deployments
        .patch(
            NAME,
            &params,
            &Patch::Apply(deployment(namespace, settings, with_replicas)),
        )
        .await?;
    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    services
        .patch(NAME, &params, &Patch::Apply(service(namespace, settings)))
        .await?;
    Ok(())
}

/// Keeps the gateway as specified: applies at start, whenever its Deployment or Service changes
/// or disappears, and every minute.
pub async fn keep(client: Client, namespace: String, settings: GatewaySettings) {
    let config = watcher::Config::default().labels("app.kubernetes.io/name=hookline-gateway");
    // Every event counts, deletions included: re-apply (a no-op when nothing drifted).
    let deployments = watcher(
        Api::<Deployment>::namespaced(client.clone(), &namespace),
        config.clone(),
    )
    .map(|_| ());
    let services = watcher(Api::<Service>::namespaced(client.clone(), &namespace), config).map(|_| ());
    let mut changes = std::pin::pin!(futures::stream::select(deployments, services));
    loop {
        if let Err(err) = apply(&client, &namespace, &settings).await {
            tracing::warn!("cannot apply the managed gateway: {err}");
        }
        tokio::select! {
            _ = changes.next() => tokio::time::sleep(Duration::from_millis(200)).await,
            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> GatewaySettings {
        GatewaySettings {
            image: "hookline:dev".into(),
            image_pull_policy: Some("Never".into()),
            extra_args: vec!["--trusted-proxies=10.0.0.0/8".into()],
            replicas: 2,
            service_type: "ClusterIP".into(),
            service_account: "hookline-gateway".into(),
            database_secret: ("db".into(), "url".into()),
            publish_token_secret: None,
            admin_token_secret: None,
            publish_tokens_secret: Some(("team-tokens".into(), "publish".into())),
            admin_tokens_secret: None,
            resources: json!({}),
            egress: EgressRules {
                deny: vec!["10.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()],
                allow: vec![],
            },
            watch_namespaces: vec!["shop".into(), "billing".into()],
            otel_env: vec![(
                "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
                "http://collector:4318".into(),
            )],
        }
    }

    #[test]
    fn the_gateway_pod_gets_its_token_files_arguments_and_pull_policy() {
        let deployment = deployment("hookline-system", &settings(), true);
        let pod = &deployment["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        let args: Vec<&str> = container["args"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|a| a.as_str())
            .collect();
        assert!(
            args.contains(&"--publish-tokens-file=/etc/hookline/publish-tokens/tokens"),
            "{args:?}"
        );
        assert!(
            !args.iter().any(|a| a.starts_with("--admin-tokens-file")),
            "{args:?}"
        );
        assert_eq!(
            args.last(),
            Some(&"--trusted-proxies=10.0.0.0/8"),
            "extra arguments come last"
        );
        assert!(args.windows(2).any(|w| w == ["--shutdown-delay", SHUTDOWN_DELAY]));
        assert_eq!(container["imagePullPolicy"], "Never");
        assert_eq!(pod["terminationGracePeriodSeconds"], TERMINATION_GRACE_SECONDS);
        assert_eq!(pod["volumes"][0]["secret"]["secretName"], "team-tokens");
        assert_eq!(pod["volumes"][0]["secret"]["items"][0]["key"], "publish");
        assert_eq!(container["volumeMounts"][0]["readOnly"], true);
        assert!(args.windows(2).any(|w| w == ["--admin-listen", "0.0.0.0:9090"]));
        assert!(args.contains(&"--egress-deny=10.0.0.0/8,fd00::/8"), "{args:?}");
        assert!(!args.iter().any(|a| a.starts_with("--egress-allow")), "{args:?}");
        assert!(args.contains(&"--watch-namespaces=shop,billing"), "{args:?}");
        let exported = container["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "OTEL_EXPORTER_OTLP_ENDPOINT" && e["value"] == "http://collector:4318");
        assert!(exported, "the controller's OTEL_* settings: {}", container["env"]);
        let ports = service("hookline-system", &settings())["spec"]["ports"].clone();
        assert_eq!(ports[1]["name"], "admin", "{ports}");
    }
}
