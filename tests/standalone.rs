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
    let log = support::process::Log::capture(child.stderr.take().unwrap(), "standalone");
    let logged = |needle: &str| log.find(needle);

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = client.get(format!("{base}/readyz")).send().await
            && r.status() == 200
        {
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("standalone exited with {status}: {:?}", log.find(""));
        }
        assert!(Instant::now() < deadline, "standalone not ready within 60s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The log says where everything is, and how to get into the console without a token.
    let sign_in = log
        .wait_for("sign in once with ", 1, Duration::from_secs(10))
        .await;
    let local = format!("http://localhost:{port}");
    assert!(
        logged(&format!(
            "receiving default/stripe at {local}/ingest/default/stripe"
        ))
        .is_some()
    );
    assert!(logged(&format!("console: {local}/ui")).is_some());
    assert!(logged("publishing is off: set HOOKLINE_PUBLISH_TOKEN").is_some());
    let link = sign_in
        .split("sign in once with ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    assert!(link.starts_with(&format!("{local}/ui/sign-in/")), "{link}");
    let token_file = state.join("admin-token");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&token_file).unwrap().permissions());
    assert_eq!(
        mode & 0o777,
        0o600,
        "the generated token is readable by its owner only"
    );
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let followed = browser.get(&link).send().await.unwrap();
    assert_eq!(followed.status(), 303, "the link signs in");
    let cookie = followed.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let events = browser
        .get(format!("{local}/ui/events"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), 200);
    assert_eq!(
        browser.get(&link).send().await.unwrap().status(),
        404,
        "only once"
    );
    let token = std::fs::read_to_string(&token_file).unwrap();
    let api = client
        .get(format!("{base}/admin/v1/events"))
        .bearer_auth(token.trim())
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), 200, "the generated token is the admin token");

    // A sample of each provider, signed with the example's own secret, gets in.
    for (file, event_type) in [
        ("stripe.yaml", Some("invoice.paid")),
        ("clerk.yaml", None),
        ("github.yaml", None),
        ("generic-hmac.yaml", None),
        ("standard-webhooks.yaml", None),
        ("resend.yaml", None),
    ] {
        let path = format!("{}/examples/{file}", env!("CARGO_MANIFEST_DIR"));
        let mut command = Command::new(env!("CARGO_BIN_EXE_hookline"));
        command.args(["send-test", &path, "--to", &base]);
        if let Some(event_type) = event_type {
            command.args(["--type", event_type]);
        }
        let output = command.output().unwrap();
        let said = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && said.contains(": 200 OK"),
            "send-test {file}: {said}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        if let Some(event_type) = event_type {
            assert!(
                said.starts_with(&format!(
                    "sent a sample {event_type} to {base}/ingest/default/stripe"
                )),
                "{said}"
            );
        }
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

/// Edits take effect without a restart: a file added, a typo refused (the last good version
/// stays, and the log says where the typo is), a secret rotated, and SIGHUP reads again.
#[tokio::test]
async fn standalone_applies_edits_live_and_keeps_the_last_good_configuration() {
    let dir = std::env::temp_dir().join(format!("hookline-live-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |file: &str, text: &str| std::fs::write(dir.join(file), text).unwrap();
    let secret = |value: &str| {
        format!("apiVersion: v1\nkind: Secret\nmetadata: {{name: stripe}}\nstringData: {{key: {value}}}\n")
    };
    write("secret.yaml", &secret("whsec_first"));
    write(
        "source.yaml",
        "apiVersion: hookline.dev/v1alpha1\nkind: WebhookSource\nmetadata: {name: stripe}\n\
         spec: {provider: stripe, secretRef: {name: stripe, key: key}}\n",
    );
    // Paced event batching, so webhooks are stored through a paced writer somewhere in the
    // suite (too few of them to linger: store::group_commit's tests cover lingering).
    let gateway = support::process::start_standalone_with(
        &dir,
        &support::fresh_database().await,
        &[],
        &["--event-batching=paced"],
    )
    .await;
    let log = &gateway.log;
    log.wait_for("watching the configuration", 1, Duration::from_secs(10))
        .await;
    let token = std::fs::read_to_string(gateway.state.join("admin-token")).unwrap();
    let client = reqwest::Client::new();
    let targets = async || -> Vec<String> {
        let body: serde_json::Value = client
            .get(format!("{}/admin/v1/targets", gateway.base))
            .bearer_auth(token.trim())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["target"].as_str().unwrap().to_owned())
            .collect()
    };
    assert!(targets().await.is_empty());

    let local = "apiVersion: hookline.dev/v1alpha1\nkind: WebhookSubscription\nmetadata: {name: local}\n\
                 spec: {url: 'http://127.0.0.1:9/', events: ['*'], maxInFlight: 4}\n";
    write("local.yaml", local);
    log.wait_for("subscription default/local added", 1, Duration::from_secs(10))
        .await;
    // Held, and said so once, as at start.
    log.wait_for(
        "subscription default/local (http://127.0.0.1:9/) is held, nothing is sent: 127.0.0.1 is a loopback address; set allowPrivateNetworks: true to allow it",
        1,
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(targets().await, ["local"]);

    write("local.yaml", &local.replace("maxInFlight", "maxInflight"));
    let refused = log
        .wait_for("configuration not reloaded", 1, Duration::from_secs(10))
        .await;
    assert!(
        refused.contains("local.yaml, document 1: WebhookSubscription local is invalid")
            && refused.contains("spec.maxInflight: unknown field (did you mean maxInFlight?)"),
        "{refused}"
    );
    assert_eq!(
        targets().await,
        ["local"],
        "the last good configuration stays in force"
    );
    write("local.yaml", local);

    // A rotated secret: what the new one signs is accepted, what the old one signs is not.
    write("secret.yaml", &secret("whsec_second"));
    log.wait_for(
        "source default/stripe: secret changed",
        1,
        Duration::from_secs(10),
    )
    .await;
    let body = r#"{"id":"evt_live","object":"event","type":"invoice.paid","data":{"object":{}}}"#;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    let send = async |secret: &str| {
        let key = SigningKey::from_text(secret).unwrap();
        client
            .post(format!("{}/ingest/default/stripe", gateway.base))
            .header("Stripe-Signature", stripe::sign(&key, now, body.as_bytes()))
            .body(body)
            .send()
            .await
            .unwrap()
            .status()
    };
    assert_eq!(send("whsec_first").await, 401);
    assert_eq!(send("whsec_second").await, 200);

    // SIGHUP reads the directory again, and says again what is wrong with it.
    write("broken.yaml", "kind: [unclosed");
    log.wait_for("configuration not reloaded", 2, Duration::from_secs(10))
        .await;
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(gateway.child.id() as i32, libc::SIGHUP) };
    log.wait_for(
        "SIGHUP: reading the configuration again",
        1,
        Duration::from_secs(10),
    )
    .await;
    log.wait_for("configuration not reloaded", 3, Duration::from_secs(10))
        .await;
    std::fs::remove_file(dir.join("broken.yaml")).unwrap();
    std::fs::remove_file(dir.join("local.yaml")).unwrap();
    log.wait_for("subscription default/local removed", 1, Duration::from_secs(10))
        .await;
    assert!(targets().await.is_empty());

    // A filter that does not compile is said at load, with the compiler's message.
    write(
        "filtered.yaml",
        "apiVersion: hookline.dev/v1alpha1\nkind: WebhookSubscription\nmetadata: {name: filtered}\n\
         spec: {url: 'http://127.0.0.1:9/', events: ['*'], allowPrivateNetworks: true, filter: 'data.amount >'}\n",
    );
    let said = log
        .wait_for(
            "subscription default/filtered (http://127.0.0.1:9/) receives nothing: its filter does not compile",
            1,
            Duration::from_secs(10),
        )
        .await;
    assert!(said.contains("ERROR: <input>:1:"), "{said}");
    drop(gateway);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A WebhookReplay file: loaded, it sends the matching stored events of its window to its
/// target; the admin API lists it with its progress and starts a dry run; removing the file
/// forgets it.
#[tokio::test]
async fn a_replay_file_sends_a_window_again_and_the_admin_api_counts_one() {
    let sink = support::sink::Sink::start().await;
    let dir = std::env::temp_dir().join(format!("hookline-replay-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |file: &str, text: &str| std::fs::write(dir.join(file), text).unwrap();
    write(
        "other.yaml",
        "apiVersion: hookline.dev/v1alpha1\nkind: WebhookSubscription\nmetadata: {name: other}\n\
         spec: {url: 'http://127.0.0.1:9/', events: ['unrelated.*'], allowPrivateNetworks: true}\n",
    );
    let gateway = support::process::start_standalone(
        &dir,
        &support::fresh_database().await,
        &[("HOOKLINE_PUBLISH_TOKEN", "replay-publish-token")],
    )
    .await;
    // Edits made before the watch starts are not seen.
    gateway
        .log
        .wait_for("watching the configuration", 1, Duration::from_secs(10))
        .await;
    let client = reqwest::Client::new();
    let from = chrono::Utc::now() - chrono::Duration::seconds(5);
    // Stored while no subscription takes them: they have no deliveries.
    for n in 0..10 {
        let published = client
            .post(format!("{}/v1/namespaces/default/events", gateway.base))
            .bearer_auth("replay-publish-token")
            .json(&serde_json::json!({"type": "order.created", "data": {"n": n}}))
            .send()
            .await
            .unwrap();
        assert_eq!(published.status(), 202);
    }
    let to = chrono::Utc::now() + chrono::Duration::seconds(1);
    write(
        "crm.yaml",
        &format!(
            "apiVersion: hookline.dev/v1alpha1\nkind: WebhookSubscription\nmetadata: {{name: crm}}\n\
             spec: {{url: '{}', events: ['order.*'], allowPrivateNetworks: true}}\n---\n\
             apiVersion: hookline.dev/v1alpha1\nkind: WebhookReplay\nmetadata: {{name: late-crm}}\n\
             spec: {{target: {{subscription: crm}}, from: '{}', to: '{}', filter: 'data.n >= 5', rate: 100}}\n",
            sink.url("crm"),
            from.to_rfc3339(),
            to.to_rfc3339(),
        ),
    );
    let received = sink.wait_for("crm", 5, Duration::from_secs(30)).await;
    let mut numbers: Vec<i64> = received
        .iter()
        .map(|r| {
            serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()["data"]["n"]
                .as_i64()
                .unwrap()
        })
        .collect();
    numbers.sort();
    assert_eq!(numbers, [5, 6, 7, 8, 9]);
    gateway
        .log
        .wait_for(
            "replay has enqueued every matching event",
            1,
            Duration::from_secs(10),
        )
        .await;

    let token = gateway.admin_token();
    let replays = async || -> serde_json::Value {
        serde_json::from_str(&gateway.admin_get("/admin/v1/replays").await).unwrap()
    };
    let listed = replays().await;
    let late = &listed["items"][0];
    assert_eq!(
        (late["name"].as_str(), late["state"].as_str()),
        (Some("late-crm"), Some("complete")),
        "{listed}"
    );
    assert_eq!(
        (late["matched"].as_i64(), late["enqueued"].as_i64()),
        (Some(5), Some(5))
    );

    // A dry run through the admin API counts without sending.
    let started = client
        .post(format!("{}/admin/v1/replays", gateway.base))
        .bearer_auth(token.trim())
        .json(&serde_json::json!({
            "namespace": "default", "name": "count-all",
            "target": {"subscription": "crm"}, "from": from.to_rfc3339(), "to": to.to_rfc3339(), "dryRun": true,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), 201, "{:?}", started.text().await);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let listed = replays().await;
        let dry = listed["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "count-all")
            .cloned();
        if let Some(dry) = dry.filter(|d| d["state"] == "complete") {
            // Five already on their way or delivered are succeeded now: all ten match.
            assert_eq!(
                (dry["matched"].as_i64(), dry["enqueued"].as_i64()),
                (Some(10), Some(0)),
                "{dry}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "the dry run to complete: {listed}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let refused = client
        .post(format!("{}/admin/v1/replays", gateway.base))
        .bearer_auth(token.trim())
        .json(&serde_json::json!({"namespace": "default", "target": {"subscription": "nobody"}, "from": from.to_rfc3339(), "to": to.to_rfc3339()}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 422);
    assert_eq!(sink.received("crm").len(), 5, "nothing more was sent");

    // One started through the API is stopped through it; one from a file is not the API's.
    let slow: serde_json::Value = client
        .post(format!("{}/admin/v1/replays", gateway.base))
        .bearer_auth(token.trim())
        .json(&serde_json::json!({
            "namespace": "default", "name": "slow",
            "target": {"subscription": "crm"}, "from": from.to_rfc3339(), "to": to.to_rfc3339(),
            "dryRun": true, "rate": 1,
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let stop = async |id: &str| {
        client
            .delete(format!("{}/admin/v1/replays/{id}", gateway.base))
            .bearer_auth(token.trim())
            .send()
            .await
            .unwrap()
            .status()
    };
    let slow_id = slow["id"].as_str().expect("the new replay's id");
    assert_eq!(stop(slow_id).await, 204);
    assert_eq!(stop(slow_id).await, 404, "gone");
    let listed = replays().await;
    let ids: Vec<&str> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["id"].as_str())
        .collect();
    assert!(!ids.contains(&slow_id), "{listed}");
    let from_file = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "late-crm")
        .and_then(|r| r["id"].as_str())
        .expect("late-crm listed with its id")
        .to_owned();
    assert_eq!(
        stop(&from_file).await,
        404,
        "a file's replay is stopped by removing the file"
    );

    // The console's form starts one too ("replay this window to this target"), and lists all.
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let form = client
        .get(format!("{}/ui/replays", gateway.base))
        .bearer_auth(token.trim())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        form.contains("Replay a time window to a target") && form.contains("default|subscription|crm"),
        "{form}"
    );
    let posted = no_redirects
        .post(format!("{}/ui/replays", gateway.base))
        .bearer_auth(token.trim())
        .form(&[
            ("csrf", ""),
            ("target", "default|subscription|crm"),
            ("from", &from.to_rfc3339()),
            ("to", &to.to_rfc3339()),
            ("filter", "data.n == 3"),
            ("dry_run", "true"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 303, "{:?}", posted.text().await);
    let page = client
        .get(format!("{}/ui/replays", gateway.base))
        .bearer_auth(token.trim())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("late-crm") && page.contains("count-all") && page.contains("(dry run)"),
        "{page}"
    );

    // The file removed, its replay is forgotten.
    write(
        "crm.yaml",
        &format!(
            "apiVersion: hookline.dev/v1alpha1\nkind: WebhookSubscription\nmetadata: {{name: crm}}\n\
         spec: {{url: '{}', events: ['order.*'], allowPrivateNetworks: true}}\n",
            sink.url("crm"),
        ),
    );
    gateway
        .log
        .wait_for(
            "replays no longer in the configuration forgotten",
            1,
            Duration::from_secs(10),
        )
        .await;
    let names: Vec<String> = replays().await["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(
        names.contains(&"count-all".to_owned()) && !names.contains(&"late-crm".to_owned()),
        "{names:?}"
    );
    drop(gateway);
    let _ = std::fs::remove_dir_all(&dir);
}
