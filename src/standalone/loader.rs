//! Reads the same YAML a user would `kubectl apply`: every `*.yaml`/`*.yml` file in a directory,
//! multi-document, holding WebhookSources, WebhookSubscriptions, WebhookReplays and v1 Secrets. Each resource is
//! validated with the CRD's own rules; any problem stops the load with the file and field named.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde::Deserialize;
use serde_json::Value;

use crate::api::{WebhookReplay, WebhookSource, WebhookSubscription, validate::validate};
use crate::catalog::Secrets;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}, document {document}: {message}")]
    Invalid {
        path: PathBuf,
        document: usize,
        message: String,
    },
    #[error("{0} holds no WebhookSource or WebhookSubscription")]
    Empty(PathBuf),
}

/// Everything loaded from a directory.
#[derive(Debug, Default)]
pub struct Config {
    pub sources: Vec<WebhookSource>,
    pub subscriptions: Vec<WebhookSubscription>,
    pub replays: Vec<WebhookReplay>,
    pub secrets: Secrets,
}

pub const DEFAULT_NAMESPACE: &str = "default";

pub fn load_dir(dir: &Path) -> Result<Config, LoadError> {
    let read_err = |source| LoadError::Read {
        path: dir.to_owned(),
        source,
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(read_err)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|ext| ext == "yaml" || ext == "yml"))
        .collect();
    files.sort();
    let mut config = Config::default();
    for file in &files {
        let text = std::fs::read_to_string(file).map_err(|source| LoadError::Read {
            path: file.clone(),
            source,
        })?;
        load_text(&text, file, &mut config)?;
    }
    if config.sources.is_empty() && config.subscriptions.is_empty() {
        return Err(LoadError::Empty(dir.to_owned()));
    }
    Ok(config)
}

/// Loads one multi-document YAML text into `config`; `path` names it in errors.
pub fn load_text(text: &str, path: &Path, config: &mut Config) -> Result<(), LoadError> {
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let invalid = |message: String| LoadError::Invalid {
            path: path.to_owned(),
            document: index + 1,
            message,
        };
        let mut value = Value::deserialize(document).map_err(|e| invalid(format!("not valid YAML: {e}")))?;
        if value.is_null() {
            continue; // an empty document, such as a trailing `---`
        }
        let api_version = value
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let kind = value
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        // Namespace from metadata, as kubectl would place it without -n.
        if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.entry("namespace")
                .or_insert_with(|| Value::from(DEFAULT_NAMESPACE));
        }
        let name = value
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        if name.is_empty() {
            return Err(invalid(format!("{kind} has no metadata.name")));
        }
        match (api_version.as_str(), kind.as_str()) {
            ("hookline.dev/v1alpha1", "WebhookSource" | "WebhookSubscription" | "WebhookReplay") => {
                validate(&kind, &value).map_err(|problems| {
                    invalid(format!("{kind} {name} is invalid:\n  {}", problems.join("\n  ")))
                })?;
                fn parsed<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, String> {
                    serde_json::from_value(value).map_err(|e| e.to_string())
                }
                match kind.as_str() {
                    "WebhookSource" => config.sources.push(parsed(value).map_err(invalid)?),
                    "WebhookSubscription" => config.subscriptions.push(parsed(value).map_err(invalid)?),
                    _ => config.replays.push(parsed(value).map_err(invalid)?),
                }
            }
            ("v1", "Secret") => {
                let namespace = value
                    .pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .unwrap_or(DEFAULT_NAMESPACE);
                config
                    .secrets
                    .insert(namespace, &name, secret_data(&value).map_err(invalid)?);
            }
            _ => {
                return Err(invalid(format!(
                    "{api_version} {kind} is not a kind Hookline reads (WebhookSource, WebhookSubscription, WebhookReplay, v1 Secret)"
                )));
            }
        }
    }
    Ok(())
}

/// A Secret's `data` (base64) merged with its `stringData` (plain text wins, as in Kubernetes).
fn secret_data(secret: &Value) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let mut data = BTreeMap::new();
    if let Some(map) = secret.get("data").and_then(Value::as_object) {
        for (key, value) in map {
            let encoded = value
                .as_str()
                .ok_or_else(|| format!("Secret data.{key} must be a base64 string"))?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map_err(|_| format!("Secret data.{key} is not valid base64"))?;
            data.insert(key.clone(), bytes);
        }
    }
    if let Some(map) = secret.get("stringData").and_then(Value::as_object) {
        for (key, value) in map {
            let text = value
                .as_str()
                .ok_or_else(|| format!("Secret stringData.{key} must be a string"))?;
            data.insert(key.clone(), text.as_bytes().to_vec());
        }
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;
    use crate::catalog::GeneratedSecrets;

    fn load(text: &str) -> Result<Config, LoadError> {
        let mut config = Config::default();
        load_text(text, Path::new("test.yaml"), &mut config).map(|()| config)
    }

    #[test]
    fn reads_sources_subscriptions_and_both_secret_forms() {
        let config = load(
            "apiVersion: v1\nkind: Secret\nmetadata: {name: a}\ndata: {k: d2hzZWNfYWJj}\n---\n\
             apiVersion: v1\nkind: Secret\nmetadata: {name: b, namespace: shop}\nstringData: {k: plain}\n---\n\
             apiVersion: hookline.dev/v1alpha1\nkind: WebhookSource\nmetadata: {name: s}\nspec: {provider: stripe, secretRef: {name: a, key: k}}\n---\n\
             apiVersion: hookline.dev/v1alpha1\nkind: WebhookSubscription\nmetadata: {name: crm, namespace: shop}\nspec: {url: 'https://x.example/', events: ['*']}\n---\n",
        )
        .expect("loads");
        assert_eq!(config.sources.len(), 1);
        assert_eq!(config.sources[0].metadata.namespace.as_deref(), Some("default"));
        assert_eq!(
            config.subscriptions[0].metadata.namespace.as_deref(),
            Some("shop")
        );
        let secret = crate::api::SecretKeyRef {
            name: "a".into(),
            key: "k".into(),
        };
        assert_eq!(config.secrets.resolve("default", &secret).unwrap(), "whsec_abc");
        let plain = crate::api::SecretKeyRef {
            name: "b".into(),
            key: "k".into(),
        };
        assert_eq!(config.secrets.resolve("shop", &plain).unwrap(), "plain");
        let catalog = Catalog::build(
            &config.sources,
            &config.subscriptions,
            &config.secrets,
            GeneratedSecrets::InDatabase,
        );
        assert!(catalog.source("default", "s").unwrap().verifier.is_ok());
    }

    #[test]
    fn invalid_resources_are_refused_with_file_document_and_field() {
        let err = load(
            "apiVersion: v1\nkind: Secret\nmetadata: {name: a}\n---\napiVersion: hookline.dev/v1alpha1\nkind: WebhookSource\nmetadata: {name: s}\nspec: {provider: stripe, secretRef: {name: a, key: k}, tolerance: soon}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("test.yaml, document 2: WebhookSource s is invalid"),
            "{err}"
        );
        assert!(err.contains("spec.tolerance: must be a duration"), "{err}");
    }

    /// Strict, as `kubectl apply`: a typo'd field stops the load, naming file, resource, field
    /// and the field meant.
    #[test]
    fn unknown_fields_are_refused_with_a_suggestion() {
        let err = load(
            "apiVersion: hookline.dev/v1alpha1\nkind: WebhookSubscription\nmetadata: {name: local}\n\
             spec: {url: 'http://127.0.0.1:9999/', events: ['*'], maxInflight: 4}\n",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "test.yaml, document 1: WebhookSubscription local is invalid:\n  spec.maxInflight: unknown field (did you mean maxInFlight?)"
        );
    }

    #[test]
    fn unknown_kinds_and_bad_yaml_are_refused() {
        let err = load("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("apps/v1 Deployment is not a kind Hookline reads"),
            "{err}"
        );
        assert!(load("kind: [unclosed").is_err());
        let err = load("apiVersion: v1\nkind: Secret\nmetadata: {name: a}\ndata: {k: '%%%'}\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("Secret data.k is not valid base64"), "{err}");
    }
}
