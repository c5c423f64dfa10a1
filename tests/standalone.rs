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
    // The log, line by line, as the person who started it reads it.
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn({
        let log = log.clone();
        move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("standalone: {line}");
                // Not a terminal, so JSON lines: the message is what a person would read.
                let message = serde_json::from_str::<serde_json::Value>(&line)
                    .ok()
                    .and_then(|v| v["message"].as_str().map(str::to_owned))
                    .unwrap_or(line);
                log.lock().unwrap().push(message);
            }
        }
    });
    let logged = |needle: &str| log.lock().unwrap().iter().find(|l| l.contains(needle)).cloned();

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = client.get(format!("{base}/readyz")).send().await
            && r.status() == 200
        {
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("standalone exited with {status}: {:?}", log.lock().unwrap());
        }
        assert!(Instant::now() < deadline, "standalone not ready within 60s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The log says where everything is, and how to get into the console without a token.
    let deadline = Instant::now() + Duration::from_secs(10);
    let sign_in = loop {
        if let Some(line) = logged("sign in once with ") {
            break line;
        }
        assert!(
            Instant::now() < deadline,
            "no sign-in link in {:?}",
            log.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let local = format!("http://localhost:{port}");
    assert!(
        logged(&format!(
            "receiving default/stripe at {local}/ingest/default/stripe"
        ))
        .is_some(),
        "{:?}",
        log.lock().unwrap()
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
