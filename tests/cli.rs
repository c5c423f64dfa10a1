//! `hookline sign` and `hookline verify`, as an integrator runs them.

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn hookline(args: &[&str], secret: &str, body: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hookline"))
        .args(args)
        .env("HOOKLINE_SECRET", secret)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run hookline");
    child.stdin.take().unwrap().write_all(body).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn sign_reproduces_the_standard_webhooks_vector() {
    let output = hookline(
        &[
            "sign",
            "--scheme",
            "standard-webhooks",
            "--id",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            "--timestamp",
            "1614265330",
        ],
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        br#"{"test": 2432232314}"#,
    );
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(
        text.contains("webhook-signature: v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=\n"),
        "{text}"
    );
}

#[test]
fn what_sign_produces_verify_accepts_and_nothing_else() {
    let body = br#"{"id":"evt_cli","type":"invoice.paid"}"#;
    for (scheme, secret) in [
        ("stripe", "whsec_cli_stripe"),
        ("svix", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
        ("standard-webhooks", "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"),
        ("github", "a github secret"),
    ] {
        let signed = hookline(&["sign", "--scheme", scheme, "--id", "evt_cli"], secret, body);
        assert!(
            signed.status.success(),
            "{scheme}: {}",
            String::from_utf8_lossy(&signed.stderr)
        );
        let headers: Vec<String> = String::from_utf8(signed.stdout)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        let mut args = vec!["verify", "--scheme", scheme];
        for header in &headers {
            args.extend(["-H", header.as_str()]);
        }
        if scheme == "github" {
            args.extend(["-H", "X-GitHub-Event: push"]);
        }
        let verified = hookline(&args, secret, body);
        assert!(
            verified.status.success(),
            "{scheme}: {}",
            String::from_utf8_lossy(&verified.stderr)
        );
        assert!(String::from_utf8_lossy(&verified.stdout).starts_with("verified: event id"));

        let tampered = hookline(&args, secret, br#"{"id":"evt_cli","type":"invoice.paid "}"#);
        assert!(
            !tampered.status.success(),
            "{scheme}: a changed body must not verify"
        );
        assert!(
            String::from_utf8_lossy(&tampered.stderr).contains("signature_mismatch"),
            "{scheme}"
        );
    }
}

#[test]
fn generic_hmac_signs_and_verifies_from_the_source_definition() {
    let source = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/generic-hmac.yaml");
    let body = br#"{"type":"stock.changed","sku":"A-1"}"#;
    let secret = "replace-with-the-shared-secret";
    let signed = hookline(
        &[
            "sign",
            "--source",
            source,
            "--id",
            "req-1",
            "--timestamp",
            "1700000000",
        ],
        secret,
        body,
    );
    assert!(
        signed.status.success(),
        "{}",
        String::from_utf8_lossy(&signed.stderr)
    );
    let text = String::from_utf8(signed.stdout).unwrap();
    assert!(text.contains("X-Signature: sha256="), "{text}");
    assert!(
        text.contains("X-Timestamp: 1700000000") && text.contains("X-Request-Id: req-1"),
        "{text}"
    );
    // Re-sign at the current time and verify with the same definition.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let signed = hookline(
        &["sign", "--source", source, "--id", "req-2", "--timestamp", &now],
        secret,
        body,
    );
    let headers: Vec<String> = String::from_utf8(signed.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let mut args = vec!["verify", "--source", source];
    for header in &headers {
        args.extend(["-H", header.as_str()]);
    }
    let verified = hookline(&args, secret, body);
    assert!(
        verified.status.success(),
        "{}",
        String::from_utf8_lossy(&verified.stderr)
    );
    assert!(String::from_utf8_lossy(&verified.stdout).contains("event id req-2, type stock.changed"));
    assert!(!hookline(&args, "another secret", body).status.success());
}

#[test]
fn a_gateway_flag_out_of_its_values_is_refused_with_them() {
    let output = hookline(&["standalone", "--event-batching", "fast"], "", b"");
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("\"fast\": expected while-writing or paced"),
        "{stderr}"
    );
}
