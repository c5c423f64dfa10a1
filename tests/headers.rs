//! Request headers of a target, from a fixed value or a Secret, as `hookline standalone` runs
//! them: they reach a real sink, a missing Secret holds the target saying which, and a Secret's
//! value appears in no output (admin API, console, metrics, the debug log).

mod support;

use std::time::Duration;

use support::process::start_standalone_with;
use support::sink::Sink;

const API_KEY: &str = "hl-header-secret-7f3a9c2e1b5d";

#[tokio::test]
async fn headers_from_secrets_arrive_and_appear_nowhere_else() {
    let sink = Sink::start().await;
    let dir = std::env::temp_dir().join(format!("hookline-headers-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let header = |secret: &str| {
        format!(
            "[{{name: X-Api-Key, valueFrom: {{secretKeyRef: {{name: {secret}, key: crm}}}}}}, {{name: X-Team, value: billing}}]"
        )
    };
    std::fs::write(
        dir.join("config.yaml"),
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: api-keys}}\nstringData: {{crm: {API_KEY}}}\n---\n\
             apiVersion: hookline.dev/v1alpha1\nkind: WebhookSubscription\nmetadata: {{name: crm}}\n\
             spec: {{url: '{}', events: ['*'], allowPrivateNetworks: true, headers: {}}}\n---\n\
             apiVersion: hookline.dev/v1alpha1\nkind: WebhookSubscription\nmetadata: {{name: missing}}\n\
             spec: {{url: '{}', events: ['*'], allowPrivateNetworks: true, headers: {}}}\n",
            sink.url("crm"),
            header("api-keys"),
            sink.url("missing"),
            header("no-such-secret"),
        ),
    )
    .unwrap();
    let gateway = start_standalone_with(
        &dir,
        &support::fresh_database().await,
        &[
            ("HOOKLINE_PUBLISH_TOKEN", "headers-publish-token"),
            ("RUST_LOG", "debug"),
        ],
        &[],
    )
    .await;
    let published = gateway
        .publish(
            "headers-publish-token",
            serde_json::json!({"type": "order.created", "data": {"n": 1}}),
        )
        .await;
    let got = sink.wait_for("crm", 1, Duration::from_secs(20)).await;
    assert_eq!(got[0].header("x-api-key"), API_KEY);
    assert_eq!(got[0].header("x-team"), "billing");
    assert!(!got[0].header("webhook-signature").is_empty(), "still signed");

    let targets = gateway.admin_get("/admin/v1/targets").await;
    assert!(
        targets.contains("endpoint_secret_unavailable")
            && targets.contains("header X-Api-Key: Secret default/no-such-secret not found"),
        "the missing Secret holds its target, named: {targets}"
    );
    let id = published["id"].as_str().unwrap();
    for path in [
        "/admin/v1/targets".to_owned(),
        "/admin/v1/events".to_owned(),
        format!("/admin/v1/events/{id}"),
        "/ui/targets".to_owned(),
        format!("/ui/events/{id}"),
        "/ui/overview".to_owned(),
        "/metrics".to_owned(),
    ] {
        assert!(
            !gateway.admin_get(&path).await.contains(API_KEY),
            "{path} shows the header's secret value"
        );
    }
    assert!(
        !gateway.log.anywhere(API_KEY),
        "the debug log holds the header's secret value"
    );
    assert!(
        gateway
            .log
            .find("cannot reach the endpoint as configured: header X-Api-Key: Secret default/no-such-secret not found")
            .is_some(),
        "the held target is said at start"
    );
    drop(gateway);
    let _ = std::fs::remove_dir_all(&dir);
}
