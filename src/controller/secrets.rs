//! Secrets the controller reads, generates and mirrors. Sources and subscriptions name Secrets
//! in their own namespace; the controller copies the ones in use into the gateway's namespace,
//! so the gateway's service account reads Secrets there only.

use std::collections::{BTreeMap, HashSet};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use sha2::Digest;

use crate::api::{GENERATED_SECRET_KEY, SecretKeyRef};
use crate::catalog::Secrets;
use crate::catalog::endpoint;
use crate::catalog::reflect::{
    MIRROR_KEY_ANNOTATION, MIRROR_LABEL, MIRROR_NAME_ANNOTATION, MIRROR_NAMESPACE_ANNOTATION,
};
use crate::verify::standard_webhooks;

pub const FIELD_MANAGER: &str = "hookline-controller";
const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "hookline-controller");

/// Why a referenced secret cannot be used, for a condition: a PascalCase reason and a message
/// naming the Secret and key (never the value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretProblem {
    pub reason: &'static str,
    pub message: String,
}

/// A referenced key as read, to be mirrored into the gateway's namespace.
pub struct ReadKey {
    namespace: String,
    reference: SecretKeyRef,
    value: ByteString,
}

/// Reads a referenced key: its text, and the key alone for mirroring.
pub async fn read(
    client: &Client,
    namespace: &str,
    reference: &SecretKeyRef,
) -> Result<(String, ReadKey), SecretProblem> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret = match api.get_opt(&reference.name).await {
        Ok(Some(secret)) => secret,
        Ok(None) => {
            return Err(SecretProblem {
                reason: "SecretNotFound",
                message: format!("Secret {} not found in namespace {namespace}", reference.name),
            });
        }
        Err(err) => {
            return Err(SecretProblem {
                reason: "SecretUnreadable",
                message: format!("cannot read Secret {}: {err}", reference.name),
            });
        }
    };
    let value = secret
        .data
        .as_ref()
        .and_then(|d| d.get(&reference.key))
        .ok_or_else(|| SecretProblem {
            reason: "SecretKeyNotFound",
            message: format!("Secret {} has no key {:?}", reference.name, reference.key),
        })?;
    let text = String::from_utf8(value.0.clone()).map_err(|_| SecretProblem {
        reason: "SecretInvalid",
        message: format!(
            "Secret {} key {:?} is not UTF-8 text",
            reference.name, reference.key
        ),
    })?;
    let read = ReadKey {
        namespace: namespace.to_owned(),
        reference: reference.clone(),
        value: value.clone(),
    };
    Ok((text.trim().to_owned(), read))
}

/// Name of the Secret generated for a target: `<resource>-<handler>-signing` or
/// `<subscription>-signing`, shortened with a hash when too long for a name.
pub fn generated_name(parts: &[&str]) -> String {
    let joined = format!("{}-signing", parts.join("-"));
    if joined.len() <= 253 {
        return joined;
    }
    let hash = hex::encode(&sha2::Sha256::digest(joined.as_bytes())[..8]);
    format!("{}-{hash}-signing", &parts[0][..parts[0].len().min(200)])
}

/// Makes sure the generated signing Secret of a target without `secretRef` exists (named from
/// `parts`, created once, owned by `owner` so deleting the resource deletes it) and returns a
/// reference to its key.
pub async fn ensure_generated(
    client: &Client,
    namespace: &str,
    parts: &[&str],
    owner: OwnerReference,
) -> Result<SecretKeyRef, kube::Error> {
    let name = &generated_name(parts);
    let reference = SecretKeyRef {
        name: name.clone(),
        key: GENERATED_SECRET_KEY.to_owned(),
    };
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    if api.get_opt(name).await?.is_some() {
        return Ok(reference);
    }
    let secret_value = standard_webhooks::encode_secret(&rand::random::<[u8; 32]>());
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([(
                MANAGED_BY.0.to_owned(),
                MANAGED_BY.1.to_owned(),
            )])),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        string_data: Some(BTreeMap::from([(GENERATED_SECRET_KEY.to_owned(), secret_value)])),
        type_: Some("Opaque".to_owned()),
        ..Secret::default()
    };
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => Ok(reference),
        // Created meanwhile by an earlier reconcile: keep that one.
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(reference),
        Err(err) => Err(err),
    }
}

/// The mirror's name in the gateway namespace: stable, short, and unique per origin key.
pub fn mirror_name(namespace: &str, name: &str, key: &str) -> String {
    let origin = format!("{namespace}/{name}/{key}");
    let hash = hex::encode(&sha2::Sha256::digest(origin.as_bytes())[..10]);
    format!("hookline-mirror-{hash}")
}

/// Mirrors the Secret keys a target reads to reach its endpoint (headers, TLS, OAuth2), and
/// checks them as the gateway will use them: the first key that cannot be read, or the first
/// setting whose material is unusable (a certificate that does not parse), as a problem naming
/// the setting (never a value).
pub async fn mirror_endpoint_secrets(
    client: &Client,
    namespace: &str,
    gateway_namespace: &str,
    target: &crate::api::DeliveryTarget,
) -> Result<Option<SecretProblem>, kube::Error> {
    let mut first = None;
    let mut values = Secrets::default();
    for (setting, reference) in target.endpoint_secrets() {
        match read(client, namespace, &reference).await {
            Ok((_, secret)) => {
                mirror(client, gateway_namespace, &secret).await?;
                let data = BTreeMap::from([(reference.key.clone(), secret.value.0.clone())]);
                values.insert(namespace, &reference.name, data);
            }
            Err(problem) => {
                first.get_or_insert(SecretProblem {
                    reason: problem.reason,
                    message: format!("{setting}: {}", problem.message),
                });
            }
        }
    }
    if first.is_some() {
        return Ok(first);
    }
    Ok(endpoint::resolve(&values, namespace, target)
        .err()
        .map(|problem| SecretProblem {
            reason: "SecretInvalid",
            message: problem.to_string(),
        }))
}

/// Copies one referenced key into the gateway's namespace, and nothing else of its Secret
/// (server-side apply: unchanged copies are not rewritten).
pub async fn mirror(client: &Client, gateway_namespace: &str, origin: &ReadKey) -> Result<(), kube::Error> {
    let SecretKeyRef {
        name: origin_name,
        key,
    } = &origin.reference;
    let name = mirror_name(&origin.namespace, origin_name, key);
    let mirror = Secret {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(gateway_namespace.to_owned()),
            labels: Some(BTreeMap::from([
                (MIRROR_LABEL.to_owned(), "true".to_owned()),
                (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
            ])),
            annotations: Some(BTreeMap::from([
                (MIRROR_NAMESPACE_ANNOTATION.to_owned(), origin.namespace.clone()),
                (MIRROR_NAME_ANNOTATION.to_owned(), origin_name.clone()),
                (MIRROR_KEY_ANNOTATION.to_owned(), key.clone()),
            ])),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(key.clone(), origin.value.clone())])),
        type_: Some("Opaque".to_owned()),
        ..Secret::default()
    };
    let api: Api<Secret> = Api::namespaced(client.clone(), gateway_namespace);
    let mut value = serde_json::to_value(&mirror).map_err(kube::Error::SerdeError)?;
    value["apiVersion"] = "v1".into();
    value["kind"] = "Secret".into();
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&value),
    )
    .await?;
    Ok(())
}

/// A referenced key: namespace, Secret name, key.
pub type KeyInUse = (String, String, String);

/// Deletes mirrors of keys no resource references any more (and mirrors of whole Secrets, as
/// earlier versions made them).
pub async fn collect_mirrors(
    client: &Client,
    gateway_namespace: &str,
    in_use: &HashSet<KeyInUse>,
) -> Result<usize, kube::Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), gateway_namespace);
    let mirrors = api
        .list(&ListParams::default().labels(&format!("{MIRROR_LABEL}=true")))
        .await?;
    let mut deleted = 0;
    for mirror in mirrors {
        let annotations = mirror.metadata.annotations.clone().unwrap_or_default();
        let annotation = |name: &str| annotations.get(name).cloned().unwrap_or_default();
        let origin = (
            annotation(MIRROR_NAMESPACE_ANNOTATION),
            annotation(MIRROR_NAME_ANNOTATION),
            annotation(MIRROR_KEY_ANNOTATION),
        );
        if !in_use.contains(&origin)
            && let Some(name) = mirror.metadata.name
        {
            api.delete(&name, &DeleteParams::default()).await?;
            deleted += 1;
        }
    }
    Ok(deleted)
}
