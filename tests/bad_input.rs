//! Bad input at the door: each answered with the right 4xx, nothing stored, nothing held.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use hookline::gateway::GatewayOptions;
use support::harness::{SECRET, harness_with, test_options};

const STRIPE: &str = "---\napiVersion: v1\nkind: Secret\nmetadata: {name: stripe, namespace: shop}\nstringData: {secret: whsec_bad_input}\n---\n\
                      apiVersion: hookline.dev/v1alpha1\nkind: WebhookSource\nmetadata: {name: stripe, namespace: shop}\n\
                      spec: {provider: stripe, secretRef: {name: stripe, key: secret}, maxBodyBytes: 1024}\n";

/// The first line of the answer to a raw request written slowly or in one go.
fn raw_status(address: &str, parts: &[(&[u8], Duration)]) -> String {
    let mut stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    for (bytes, pause) in parts {
        if stream.write_all(bytes).is_err() {
            break; // the server may close before we finish: that is an answer too
        }
        std::thread::sleep(*pause);
    }
    let mut answer = vec![0; 256];
    let n = stream.read(&mut answer).unwrap_or(0);
    String::from_utf8_lossy(&answer[..n])
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn bad_requests_get_the_right_4xx_and_store_nothing() {
    let options = GatewayOptions {
        request_timeout: Duration::from_secs(1),
        ..test_options()
    };
    let h = harness_with(&format!("{SECRET}{STRIPE}"), options).await;
    let ingest = format!("{}/ingest/shop/stripe", h.base);
    let address = h.base.trim_start_matches("http://").to_owned();

    // Larger than maxBodyBytes, declared or streamed.
    let big = vec![b'x'; 4096];
    let response = h
        .client
        .post(&ingest)
        .header("Stripe-Signature", "t=1,v1=00")
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    let addr = address.clone();
    let status = tokio::task::spawn_blocking(move || {
        let chunk = format!("200\r\n{}\r\n", "x".repeat(0x200));
        let mut request = b"POST /ingest/shop/stripe HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nStripe-Signature: t=1,v1=00\r\n\r\n".to_vec();
        for _ in 0..8 {
            request.extend_from_slice(chunk.as_bytes());
        }
        raw_status(&addr, &[(&request, Duration::ZERO)])
    })
    .await
    .unwrap();
    assert_eq!(
        status, "HTTP/1.1 413 Payload Too Large",
        "a streamed body without a length is bounded too"
    );

    // Not UTF-8, not JSON: refused at the signature, nothing stored.
    let response = h
        .client
        .post(&ingest)
        .header("Stripe-Signature", "t=1,v1=00")
        .body(vec![0xff, 0xfe, 0x00, 0x80])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);

    // Hundreds of headers.
    let mut request = h.client.post(&ingest);
    for i in 0..300 {
        request = request.header(format!("x-filler-{i}"), "v");
    }
    let response = request.body("{}").send().await.unwrap();
    assert_eq!(response.status(), 431);

    // A body that trickles in: cut off with 408 after the request timeout.
    let addr = address.clone();
    let started = Instant::now();
    let status = tokio::task::spawn_blocking(move || {
        raw_status(
            &addr,
            &[
                (b"POST /ingest/shop/stripe HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\nStripe-Signature: t=1,v1=00\r\n\r\n{", Duration::from_millis(700)),
                (b"\"a\"", Duration::from_millis(700)),
                (b":1", Duration::from_millis(700)),
            ],
        )
    })
    .await
    .unwrap();
    assert_eq!(status, "HTTP/1.1 408 Request Timeout");
    assert!(started.elapsed() < Duration::from_secs(10));

    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&h.pool)
        .await
        .unwrap();
    assert_eq!(stored, 0);
    // The gateway still serves normally afterwards.
    let health = h.client.get(format!("{}/healthz", h.base)).send().await.unwrap();
    assert_eq!(health.status(), 200);
}
