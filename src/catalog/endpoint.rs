//! How a target's endpoint is reached beyond its URL: request headers, TLS (a client
//! certificate, the CAs of the endpoint, the name its certificate is verified against) and OAuth2
//! client credentials, resolved from Secrets once per configuration change. Values read from
//! Secrets stay out of Debug output and every message.

use std::fmt;
use std::sync::Arc;

use http::{HeaderName, HeaderValue};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};

use super::{SecretUnavailable, Secrets};
use crate::api::delivery::{TLS_CERTIFICATE_KEY, TLS_PRIVATE_KEY_KEY};
use crate::api::{DeliveryTarget, EndpointAuth, EndpointTls, SecretKeyRef};

/// A target's endpoint settings, resolved.
#[derive(Debug, Default)]
pub struct Endpoint {
    /// `spec.headers`, values from Secrets marked sensitive.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub tls: Option<Arc<TlsSettings>>,
    pub oauth2: Option<Arc<OAuth2Credentials>>,
}

/// Why a target's endpoint settings do not resolve: the setting, and what is wrong with it
/// (mostly with the Secret it reads; never a value).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{setting}: {problem}")]
pub struct EndpointProblem {
    /// `header X-Api-Key`, `tls client certificate`, `oauth2 client secret`, …
    pub setting: String,
    pub problem: String,
}

impl EndpointProblem {
    fn new(setting: &str, problem: impl fmt::Display) -> Self {
        Self {
            setting: setting.to_owned(),
            problem: problem.to_string(),
        }
    }
}

/// A client TLS configuration for one endpoint. `fingerprint` identifies the material it was
/// built from, so an unchanged configuration keeps its HTTP client and connections, and a
/// rotated certificate gets a new one.
pub struct TlsSettings {
    pub config: rustls::ClientConfig,
    pub fingerprint: [u8; 32],
}

impl fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSettings")
            .field("fingerprint", &hex::encode(&self.fingerprint[..8]))
            .finish_non_exhaustive()
    }
}

/// What the client credentials grant needs. `fingerprint` identifies them, so a cached token
/// is used only with the credentials it was issued for.
pub struct OAuth2Credentials {
    pub token_url: String,
    pub client_id: String,
    pub client_secret: String,
    /// Space-separated, as the `scope` parameter; empty for none.
    pub scope: String,
    pub fingerprint: [u8; 32],
}

impl fmt::Debug for OAuth2Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuth2Credentials")
            .field("token_url", &self.token_url)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// Resolves a target's endpoint settings in the target's namespace; the first setting that
/// does not resolve is the problem.
pub fn resolve(
    secrets: &Secrets,
    namespace: &str,
    spec: &DeliveryTarget,
) -> Result<Endpoint, EndpointProblem> {
    let read = |setting: &str, reference: &SecretKeyRef| {
        secrets
            .resolve(namespace, reference)
            .map_err(|problem| EndpointProblem::new(setting, problem))
    };
    let mut headers = Vec::with_capacity(spec.headers.len());
    for header in &spec.headers {
        // Names were checked at admission.
        let Ok(name) = HeaderName::from_bytes(header.name.as_bytes()) else {
            continue;
        };
        let value = match (&header.value, &header.value_from) {
            (Some(value), _) => HeaderValue::from_str(value).ok(),
            (None, Some(source)) => {
                let reference = &source.secret_key_ref;
                let text = read(&format!("header {}", header.name), reference)?;
                let mut value = HeaderValue::from_str(&text).map_err(|_| {
                    EndpointProblem::new(
                        &format!("header {}", header.name),
                        invalid(
                            namespace,
                            reference,
                            "is not a valid header value (a control character?)",
                        ),
                    )
                })?;
                // Kept out of Debug output and HTTP/2 header compression tables.
                value.set_sensitive(true);
                Some(value)
            }
            (None, None) => None,
        };
        if let Some(value) = value {
            headers.push((name, value));
        }
    }
    let tls = match &spec.tls {
        Some(tls) => Some(Arc::new(tls_settings(secrets, namespace, tls)?)),
        None => None,
    };
    let oauth2 = match &spec.auth {
        Some(EndpointAuth { oauth2 }) => {
            let client_id = read("oauth2 client id", &oauth2.client_id_ref)?;
            let client_secret = read("oauth2 client secret", &oauth2.client_secret_ref)?;
            let scope = oauth2.scopes.join(" ");
            let fingerprint = fingerprint(&[
                oauth2.token_url.as_bytes(),
                client_id.as_bytes(),
                client_secret.as_bytes(),
                scope.as_bytes(),
            ]);
            Some(Arc::new(OAuth2Credentials {
                token_url: oauth2.token_url.clone(),
                client_id,
                client_secret,
                scope,
                fingerprint,
            }))
        }
        None => None,
    };
    Ok(Endpoint { headers, tls, oauth2 })
}

fn invalid(namespace: &str, reference: &SecretKeyRef, why: impl Into<String>) -> SecretUnavailable {
    SecretUnavailable::Invalid {
        namespace: namespace.to_owned(),
        name: reference.name.clone(),
        key: reference.key.clone(),
        why: why.into(),
    }
}

fn fingerprint(parts: &[&[u8]]) -> [u8; 32] {
    let mut hash = Sha256::new();
    for part in parts {
        // Length-prefixed, so no two different lists hash alike.
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    hash.finalize().into()
}

fn tls_settings(
    secrets: &Secrets,
    namespace: &str,
    tls: &EndpointTls,
) -> Result<TlsSettings, EndpointProblem> {
    let problem =
        |setting: &'static str| move |problem: SecretUnavailable| EndpointProblem::new(setting, problem);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut material: Vec<Vec<u8>> = Vec::new();

    let roots = match &tls.ca_bundle_ref {
        Some(reference) => {
            let pem = secrets
                .resolve(namespace, reference)
                .map_err(problem("tls CA bundle"))?;
            let mut roots = RootCertStore::empty();
            for certificate in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let added = certificate.ok().and_then(|c| roots.add(c).ok());
                if added.is_none() {
                    return Err(problem("tls CA bundle")(invalid(
                        namespace,
                        reference,
                        "holds a certificate that does not parse",
                    )));
                }
            }
            if roots.is_empty() {
                return Err(problem("tls CA bundle")(invalid(
                    namespace,
                    reference,
                    "holds no PEM certificate",
                )));
            }
            material.push(pem.into_bytes());
            roots
        }
        None => RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        },
    };
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|err| EndpointProblem::new("tls CA bundle", err))?;
    let verifier: Arc<dyn ServerCertVerifier> = match &tls.server_name {
        Some(name) => {
            material.push(name.clone().into_bytes());
            // Admission checked it is a DNS name.
            let name = ServerName::try_from(name.clone())
                .map_err(|_| EndpointProblem::new("tls serverName", format!("{name:?} is not a DNS name")))?;
            Arc::new(VerifyAs {
                name,
                inner: verifier,
            })
        }
        None => verifier,
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match &tls.client_certificate_ref {
        Some(secret) => {
            let key_of = |key: &str| SecretKeyRef {
                name: secret.name.clone(),
                key: key.to_owned(),
            };
            let (certificate_ref, key_ref) = (key_of(TLS_CERTIFICATE_KEY), key_of(TLS_PRIVATE_KEY_KEY));
            let read = |reference: &SecretKeyRef| {
                secrets
                    .resolve(namespace, reference)
                    .map_err(problem("tls client certificate"))
            };
            let (chain_pem, key_pem) = (read(&certificate_ref)?, read(&key_ref)?);
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
                .collect::<Result<_, _>>()
                .ok()
                .filter(|chain: &Vec<_>| !chain.is_empty())
                .ok_or_else(|| {
                    problem("tls client certificate")(invalid(
                        namespace,
                        &certificate_ref,
                        "holds no PEM certificate",
                    ))
                })?;
            let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|_| {
                problem("tls client certificate")(invalid(namespace, &key_ref, "holds no PEM private key"))
            })?;
            material.push(chain_pem.into_bytes());
            material.push(key_pem.into_bytes());
            builder.with_client_auth_cert(chain, key).map_err(|err| {
                problem("tls client certificate")(invalid(
                    namespace,
                    &key_ref,
                    format!("does not suit the certificate: {err}"),
                ))
            })?
        }
        None => builder.with_no_client_auth(),
    };
    // The HTTP client speaks HTTP/1.1.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let parts: Vec<&[u8]> = material.iter().map(Vec::as_slice).collect();
    Ok(TlsSettings {
        config,
        fingerprint: fingerprint(&parts),
    })
}

/// Verifies the endpoint's certificate for a configured name instead of the URL's host.
#[derive(Debug)]
struct VerifyAs {
    name: ServerName<'static>,
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for VerifyAs {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _url_host: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn target(yaml: &str) -> DeliveryTarget {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn client_certificate() -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let certificate = rcgen::CertificateParams::new(vec!["client.example".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (certificate.pem(), key.serialize_pem())
    }

    fn with_certificate(secrets: &mut Secrets, (certificate, key): &(String, String)) {
        let data = BTreeMap::from([
            (TLS_CERTIFICATE_KEY.to_owned(), certificate.as_bytes().to_vec()),
            (TLS_PRIVATE_KEY_KEY.to_owned(), key.as_bytes().to_vec()),
        ]);
        secrets.insert("billing", "client-tls", data);
    }

    const TLS: &str = "{url: 'https://10.0.0.7/', events: ['*'], tls: {clientCertificateRef: {name: client-tls}, serverName: billing.internal}}";

    #[test]
    fn tls_material_resolves_and_a_rotation_changes_its_fingerprint() {
        let spec = target(TLS);
        let mut secrets = Secrets::default();
        let missing = resolve(&secrets, "billing", &spec).unwrap_err();
        assert_eq!(
            missing.to_string(),
            "tls client certificate: Secret billing/client-tls not found"
        );
        with_certificate(&mut secrets, &client_certificate());
        let first = resolve(&secrets, "billing", &spec).unwrap().tls.unwrap();
        let again = resolve(&secrets, "billing", &spec).unwrap().tls.unwrap();
        assert_eq!(
            first.fingerprint, again.fingerprint,
            "unchanged material, same client"
        );
        with_certificate(&mut secrets, &client_certificate());
        let rotated = resolve(&secrets, "billing", &spec).unwrap().tls.unwrap();
        assert_ne!(
            first.fingerprint, rotated.fingerprint,
            "a renewed certificate, a new client"
        );
        assert!(!format!("{rotated:?}").contains("PRIVATE KEY"));
    }

    #[test]
    fn unusable_material_names_the_setting_and_the_key() {
        let spec = target(TLS);
        let mut secrets = Secrets::default();
        let (certificate, _) = client_certificate();
        with_certificate(&mut secrets, &(certificate.clone(), "not a key".to_owned()));
        assert_eq!(
            resolve(&secrets, "billing", &spec).unwrap_err().to_string(),
            "tls client certificate: Secret billing/client-tls key \"tls.key\" holds no PEM private key"
        );
        let (_, other_key) = client_certificate();
        with_certificate(&mut secrets, &(certificate, other_key));
        let mismatch = resolve(&secrets, "billing", &spec).unwrap_err().to_string();
        assert!(mismatch.contains("does not suit the certificate"), "{mismatch}");

        let spec =
            target("{url: 'https://x.example/', events: ['*'], tls: {caBundleRef: {name: ca, key: ca.crt}}}");
        secrets.insert(
            "billing",
            "ca",
            BTreeMap::from([(
                "ca.crt".to_owned(),
                b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_vec(),
            )]),
        );
        let bad_ca = resolve(&secrets, "billing", &spec).unwrap_err().to_string();
        assert!(
            bad_ca.starts_with("tls CA bundle: Secret billing/ca key \"ca.crt\""),
            "{bad_ca}"
        );
    }

    #[test]
    fn oauth2_credentials_resolve_and_stay_out_of_debug_output() {
        let spec = target(
            "{url: 'https://x.example/', events: ['*'], auth: {oauth2: {tokenURL: 'https://auth.example/token', \
             clientIdRef: {name: oauth, key: id}, clientSecretRef: {name: oauth, key: secret}, scopes: [a, b]}}}",
        );
        let mut secrets = Secrets::default();
        secrets.insert(
            "billing",
            "oauth",
            BTreeMap::from([("id".to_owned(), b"client".to_vec())]),
        );
        assert_eq!(
            resolve(&secrets, "billing", &spec).unwrap_err().to_string(),
            "oauth2 client secret: Secret billing/oauth has no key \"secret\""
        );
        secrets.insert(
            "billing",
            "oauth",
            BTreeMap::from([("secret".to_owned(), b"s3cret-value\n".to_vec())]),
        );
        let credentials = resolve(&secrets, "billing", &spec).unwrap().oauth2.unwrap();
        assert_eq!(
            (
                credentials.client_id.as_str(),
                credentials.client_secret.as_str(),
                credentials.scope.as_str()
            ),
            ("client", "s3cret-value", "a b")
        );
        assert!(!format!("{credentials:?}").contains("s3cret"));
    }
}
