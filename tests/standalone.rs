//! `hookline standalone -f examples/` as a user runs it: a real process, no DATABASE_URL (so it
//! starts its own Postgres), real HTTP, SIGTERM to stop.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hookline::verify::{SigningKey, stripe};

#[tokio::test]
async fn standalone_serves_the_examples_with_its_own_database() {
    let state = std::env::temp_dir().join(format!("hookline-standalone-{}", uuid::Uuid::new_v4().simple()));
    let port = support::free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_hookline"))
        .args([
            "standalone",
            "-f",
            concat!(env!("CARGO_MANIFEST_DIR"), "/examples"),
            "--listen",
        ])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--state-dir")
        .arg(&state)
        .env_remove("DATABASE_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start hookline standalone");
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = client.get(format!("{base}/readyz")).send().await
            && r.status() == 200
        {
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            let output = child.wait_with_output().unwrap();
            panic!(
                "standalone exited with {status}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        assert!(Instant::now() < deadline, "standalone not ready within 60s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Signed with the secret in examples/stripe.yaml, as Stripe would.
    let body = r#"{"id":"evt_standalone","object":"event","type":"invoice.paid","data":{"object":{}}}"#;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    let key = SigningKey::from_text("whsec_replace_with_the_endpoint_signing_secret").unwrap();
    let send = || {
        client
            .post(format!("{base}/ingest/default/stripe"))
            .header("Stripe-Signature", stripe::sign(&key, now, body.as_bytes()))
            .body(body)
            .send()
    };
    let first = send().await.expect("request");
    assert_eq!(first.status(), 200);
    let answer: serde_json::Value = first.json().await.unwrap();
    assert_eq!(
        answer["deliveries"], 2,
        "billing-api handler and the acme-crm subscription: {answer}"
    );
    let again = send().await.expect("request");
    assert_eq!(again.headers()["hookline-duplicate"], "true");
    let unsigned = client
        .post(format!("{base}/ingest/default/stripe"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status(), 401);

    // SIGTERM: drain, stop the private database, exit cleanly.
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().expect("wait for exit");
    assert!(status.success(), "standalone exit status after SIGTERM: {status}");
    assert!(
        !state.join("postgres/data/postmaster.pid").exists(),
        "the private Postgres must be stopped on exit"
    );
    let _ = std::fs::remove_dir_all(&state);
}
