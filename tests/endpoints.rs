//! Endpoint authentication as `hookline standalone` runs it: mutual TLS to a real rustls server
//! that demands a client certificate (refused without one, accepted with one, a rotated one
//! picked up), and OAuth2 client credentials against a real token endpoint and resource server
//! (a token reused, fetched again after it expires, refreshed once on a 401; a bad secret
//! fails the attempt saying why). No credential appears in the gateway's output.

mod support;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use rcgen::{CertificateParams, CertifiedIssuer, DistinguishedName, DnType, IsCa, KeyPair};
use serde_json::{Value, json};
use support::process::{GatewayProcess, start_standalone_with};
use support::wait_until;
use tokio_rustls::rustls;

const TOKEN: &str = "endpoints-publish-token";

fn config_dir(documents: &[Value]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hookline-endpoints-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    write_config(&dir, documents);
    dir
}

/// JSON is YAML: one document per resource.
fn write_config(dir: &Path, documents: &[Value]) {
    let text: Vec<String> = documents.iter().map(Value::to_string).collect();
    std::fs::write(dir.join("config.yaml"), text.join("\n---\n")).unwrap();
}

async fn start(dir: &Path) -> GatewayProcess {
    start_standalone_with(
        dir,
        &support::fresh_database().await,
        &[("HOOKLINE_PUBLISH_TOKEN", TOKEN), ("RUST_LOG", "debug")],
        &[],
    )
    .await
}

/// Publishes an event; its id.
async fn publish(gateway: &GatewayProcess, event_type: &str, n: usize) -> String {
    let answer = gateway
        .publish(TOKEN, json!({"type": event_type, "data": {"n": n}}))
        .await;
    answer["id"].as_str().unwrap().to_owned()
}

/// The last attempt of an event's delivery to a subscription, as the admin API shows it, once
/// there is one.
async fn last_attempt(gateway: &GatewayProcess, event: &str, subscription: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let detail: Value =
            serde_json::from_str(&gateway.admin_get(&format!("/admin/v1/events/{event}")).await).unwrap();
        let attempt = detail["deliveries"]
            .as_array()
            .and_then(|all| all.iter().find(|d| d["target"] == subscription))
            .and_then(|d| d["attempts"].as_array()?.last().cloned());
        if let Some(attempt) = attempt {
            return attempt;
        }
        assert!(
            Instant::now() < deadline,
            "an attempt to {subscription} within 20s: {detail}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Mutual TLS

struct Pki {
    ca_pem: String,
    server: (
        Vec<rustls::pki_types::CertificateDer<'static>>,
        rustls::pki_types::PrivateKeyDer<'static>,
    ),
    client_ca: rustls::pki_types::CertificateDer<'static>,
    clients: Vec<ClientCertificate>,
}

struct ClientCertificate {
    certificate_pem: String,
    key_pem: String,
    der: Vec<u8>,
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

fn leaf(
    names: &[&str],
    common_name: &str,
    issuer: &CertifiedIssuer<'static, KeyPair>,
) -> (rcgen::Certificate, KeyPair) {
    let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, common_name);
    let key = KeyPair::generate().unwrap();
    let certificate = params.signed_by(&key, issuer).unwrap();
    (certificate, key)
}

fn pki() -> Pki {
    let server_ca = ca("endpoint CA");
    let client_ca = ca("client CA");
    let (server, server_key) = leaf(&["billing.internal"], "billing.internal", &server_ca);
    let clients = ["hookline-a", "hookline-b"]
        .iter()
        .map(|name| {
            let (certificate, key) = leaf(&[], name, &client_ca);
            ClientCertificate {
                certificate_pem: certificate.pem(),
                key_pem: key.serialize_pem(),
                der: certificate.der().to_vec(),
            }
        })
        .collect();
    Pki {
        ca_pem: server_ca.pem(),
        server: (
            vec![server.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(server_key.serialize_der().into()),
        ),
        client_ca: client_ca.der().clone(),
        clients,
    }
}

/// What the mutual-TLS server saw: each request's client certificate, and refused handshakes.
#[derive(Default)]
struct TlsSeen {
    requests: Mutex<Vec<Vec<u8>>>,
    refused: Mutex<Vec<String>>,
}

/// A real rustls HTTPS server that demands a client certificate signed by the client CA.
async fn mtls_server(pki: &Pki) -> (u16, Arc<TlsSeen>) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.client_ca.clone()).unwrap();
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(pki.server.0.clone(), pki.server.1.clone_key())
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(TlsSeen::default());
    let state = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, seen) = (acceptor.clone(), state.clone());
            tokio::spawn(async move {
                let stream = match acceptor.accept(tcp).await {
                    Ok(stream) => stream,
                    Err(err) => {
                        seen.refused.lock().unwrap().push(err.to_string());
                        return;
                    }
                };
                let peer = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .map(|c| c.to_vec())
                    .unwrap_or_default();
                let service = hyper::service::service_fn(move |_request| {
                    let (seen, peer) = (seen.clone(), peer.clone());
                    async move {
                        seen.requests.lock().unwrap().push(peer);
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(String::from("ok")))
                    }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await;
            });
        }
    });
    (port, seen)
}

fn tls_config(pki: &Pki, port: u16, client: usize) -> Vec<Value> {
    let url = format!("https://127.0.0.1:{port}/hook");
    let tls = |with_certificate: bool| {
        let mut tls = json!({"caBundleRef": {"name": "endpoint-ca", "key": "ca.crt"}, "serverName": "billing.internal"});
        if with_certificate {
            tls["clientCertificateRef"] = json!({"name": "client-tls"});
        }
        tls
    };
    let subscription = |name: &str, with_certificate: bool| {
        json!({
            "apiVersion": "hookline.dev/v1alpha1", "kind": "WebhookSubscription", "metadata": {"name": name},
            "spec": {"url": url, "events": ["*"], "allowPrivateNetworks": true, "tls": tls(with_certificate),
                     "retryPolicy": {"maxAttempts": 1}, "circuitBreaker": {"failureThreshold": 1000}}
        })
    };
    vec![
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "endpoint-ca"},
               "stringData": {"ca.crt": pki.ca_pem}}),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "client-tls"}, "type": "kubernetes.io/tls",
               "stringData": {"tls.crt": pki.clients[client].certificate_pem, "tls.key": pki.clients[client].key_pem}}),
        subscription("mutual", true),
        subscription("anonymous", false),
    ]
}

#[tokio::test]
async fn mutual_tls_is_refused_without_a_certificate_accepted_with_one_and_follows_rotation() {
    let pki = pki();
    let (port, seen) = mtls_server(&pki).await;
    let dir = config_dir(&tls_config(&pki, port, 0));
    let gateway = start(&dir).await;

    let first = publish(&gateway, "order.created", 1).await;
    let received = |seen: &TlsSeen| seen.requests.lock().unwrap().clone();
    wait_until(
        "a request with a client certificate",
        Duration::from_secs(20),
        || !received(&seen).is_empty(),
    )
    .await;
    assert_eq!(
        received(&seen)[0],
        pki.clients[0].der,
        "the configured certificate"
    );
    // The anonymous subscription's handshake is refused by the server; nothing of it arrives.
    wait_until("the anonymous handshake refused", Duration::from_secs(20), || {
        !seen.refused.lock().unwrap().is_empty()
    })
    .await;
    let refused = last_attempt(&gateway, &first, "anonymous").await;
    assert!(refused["statusCode"].is_null(), "no HTTP answer: {refused}");
    assert_eq!(
        received(&seen).len(),
        1,
        "only the mutual subscription got through"
    );

    // cert-manager renews: the Secret holds a new certificate; the next delivery presents it.
    gateway
        .log
        .wait_for("watching the configuration", 1, Duration::from_secs(20))
        .await;
    write_config(&dir, &tls_config(&pki, port, 1));
    gateway
        .log
        .wait_for("secret changed", 1, Duration::from_secs(20))
        .await;
    publish(&gateway, "order.created", 2).await;
    wait_until("a request after the rotation", Duration::from_secs(20), || {
        received(&seen).len() >= 2
    })
    .await;
    assert_eq!(received(&seen)[1], pki.clients[1].der, "the rotated certificate");

    // A key that does not parse holds the target, saying which setting.
    let mut broken = tls_config(&pki, port, 1);
    broken[1]["stringData"]["tls.key"] = json!("not a key");
    write_config(&dir, &broken);
    gateway
        .log
        .wait_for("secret changed", 2, Duration::from_secs(20))
        .await;
    let targets = gateway.admin_get("/admin/v1/targets").await;
    assert!(
        targets.contains("endpoint_secret_unavailable")
            && targets.contains("tls client certificate: Secret default/client-tls key \\\"tls.key\\\" holds no PEM private key"),
        "{targets}"
    );
    for client in &pki.clients {
        let key_body: String = client
            .key_pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        assert!(!gateway.log.anywhere(&key_body[..40]), "a private key in the log");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------------
// OAuth2 client credentials

const CLIENT_ID: &str = "hookline-client";
const CLIENT_SECRET: &str = "oauth-secret-5d1e8b7a9c";

/// A token endpoint and the resource server that accepts its tokens.
#[derive(Default)]
struct Authority {
    /// Issued tokens, with when they expire at the resource server.
    issued: Mutex<Vec<(String, Instant)>>,
    revoked: Mutex<HashSet<String>>,
    /// The token each accepted request carried.
    accepted: Mutex<Vec<String>>,
    rejected: Mutex<usize>,
}

const LIFETIME: Duration = Duration::from_secs(2);

async fn token(
    State(authority): State<Arc<Authority>>,
    headers: HeaderMap,
    body: String,
) -> axum::response::Response {
    use base64::Engine;
    let expected = base64::engine::general_purpose::STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}"));
    let authorization = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if authorization != format!("Basic {expected}") {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"error": "invalid_client", "error_description": "unknown client"})),
        )
            .into_response();
    }
    assert!(body.contains("grant_type=client_credentials"), "{body}");
    assert!(body.contains("scope=deliveries%3Awrite+audit"), "{body}");
    let mut issued = authority.issued.lock().unwrap();
    let value = format!("token-{}", issued.len() + 1);
    issued.push((value.clone(), Instant::now() + LIFETIME));
    axum::Json(json!({"access_token": value, "token_type": "Bearer", "expires_in": LIFETIME.as_secs()}))
        .into_response()
}

async fn resource(State(authority): State<Arc<Authority>>, headers: HeaderMap) -> StatusCode {
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_owned();
    let valid = authority
        .issued
        .lock()
        .unwrap()
        .iter()
        .any(|(t, expires)| *t == bearer && Instant::now() < *expires);
    if !valid || authority.revoked.lock().unwrap().contains(&bearer) {
        *authority.rejected.lock().unwrap() += 1;
        return StatusCode::UNAUTHORIZED;
    }
    authority.accepted.lock().unwrap().push(bearer);
    StatusCode::OK
}

async fn authority() -> (String, Arc<Authority>) {
    let authority = Arc::new(Authority::default());
    let app = axum::Router::new()
        .route("/oauth/token", axum::routing::post(token))
        .route("/hook", axum::routing::post(resource))
        .with_state(authority.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, authority)
}

#[tokio::test]
async fn oauth2_tokens_are_reused_refreshed_after_expiry_and_once_on_401() {
    let (base, authority) = authority().await;
    let subscription = |name: &str, secret_key: &str| {
        json!({
            "apiVersion": "hookline.dev/v1alpha1", "kind": "WebhookSubscription", "metadata": {"name": name},
            "spec": {"url": format!("{base}/hook"), "events": [if name == "api" { "order.*" } else { "audit.*" }],
                     "allowPrivateNetworks": true, "retryPolicy": {"maxAttempts": 1},
                     "auth": {"oauth2": {"tokenURL": format!("{base}/oauth/token"),
                              "clientIdRef": {"name": "oauth", "key": "id"},
                              "clientSecretRef": {"name": "oauth", "key": secret_key},
                              "scopes": ["deliveries:write", "audit"]}}}
        })
    };
    let dir = config_dir(&[
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "oauth"},
               "stringData": {"id": CLIENT_ID, "secret": CLIENT_SECRET, "wrong": "not-the-secret"}}),
        subscription("api", "secret"),
        subscription("wrong", "wrong"),
    ]);
    let gateway = start(&dir).await;
    let accepted = || authority.accepted.lock().unwrap().clone();
    let issued = || authority.issued.lock().unwrap().len();

    // Five deliveries, one token.
    for n in 0..5 {
        publish(&gateway, "order.created", n).await;
    }
    wait_until("five deliveries", Duration::from_secs(20), || {
        accepted().len() >= 5
    })
    .await;
    assert_eq!(issued(), 1, "one token for five deliveries");
    assert!(accepted().iter().all(|t| t == "token-1"));

    // Expired: the next delivery fetches a new one first.
    tokio::time::sleep(LIFETIME + Duration::from_millis(200)).await;
    publish(&gateway, "order.created", 5).await;
    wait_until("a delivery after expiry", Duration::from_secs(20), || {
        accepted().len() >= 6
    })
    .await;
    assert_eq!(issued(), 2);
    assert_eq!(accepted()[5], "token-2");
    assert_eq!(
        *authority.rejected.lock().unwrap(),
        0,
        "never sent an expired token"
    );

    // Revoked before it expires: the endpoint answers 401, the token is fetched again once and
    // the delivery goes through in the same attempt.
    authority.revoked.lock().unwrap().insert("token-2".to_owned());
    publish(&gateway, "order.created", 6).await;
    wait_until("a delivery after the 401", Duration::from_secs(20), || {
        accepted().len() >= 7
    })
    .await;
    assert_eq!(issued(), 3);
    assert_eq!(accepted()[6], "token-3");
    assert_eq!(*authority.rejected.lock().unwrap(), 1);

    // A client secret the token endpoint refuses: the attempt fails before sending, saying why.
    let audit = publish(&gateway, "audit.logged", 7).await;
    let failed = last_attempt(&gateway, &audit, "wrong").await;
    assert_eq!(failed["errorClass"], "auth", "{failed}");
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("token endpoint answered 401 Unauthorized: invalid_client (unknown client)"),
        "{failed}"
    );
    assert_eq!(accepted().len(), 7, "nothing sent without a token");

    for secret in [CLIENT_SECRET, "token-1", "token-2", "token-3"] {
        assert!(!gateway.log.anywhere(secret), "{secret} in the log");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
