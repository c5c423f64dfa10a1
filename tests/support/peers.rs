//! The official libraries of the formats Hookline speaks (tests/peers, installed by hack/test),
//! run by node on what a real sink received.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use super::sink::Received;

/// Runs `tests/peers/{script}` on a received request (its headers and body, and `secret` when
/// the script verifies a signature); the JSON it prints, or what it said on failing.
pub fn run(script: &str, request: &Received, secret: Option<&str>) -> Result<Value, String> {
    assert!(
        super::repo_path("tests/peers/node_modules/cloudevents").exists()
            && super::repo_path("tests/peers/node_modules/standardwebhooks").exists(),
        "the official libraries are installed by hack/test (npm ci --prefix tests/peers)"
    );
    let headers: serde_json::Map<String, Value> = request
        .headers
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                json!(value.to_str().unwrap_or_default()),
            )
        })
        .collect();
    let input = json!({"secret": secret, "headers": headers, "body": String::from_utf8_lossy(&request.body)});
    let mut child = Command::new("node")
        .arg(super::repo_path(&format!("tests/peers/{script}")))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node runs");
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(input.to_string().as_bytes())
        .expect("write to node");
    let output = child.wait_with_output().expect("node finishes");
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    Ok(serde_json::from_slice(&output.stdout).expect("JSON from the peer"))
}

/// The payload of a request the official Standard Webhooks library verifies with `secret`.
pub fn verify_standard_webhooks(request: &Received, secret: &str) -> Result<Value, String> {
    run("verify-standard-webhooks.mjs", request, Some(secret))
}

/// A request as the official CloudEvents SDK reads it: the event's attributes and data.
pub fn parse_cloudevent(request: &Received) -> Result<Value, String> {
    run("parse-cloudevent.mjs", request, None)
}
