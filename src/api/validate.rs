//! Validation without an API server (for `hookline standalone`), with the same rules the API
//! server applies: the CRD's OpenAPI schema (types, enums, bounds, lengths) and its CEL rules,
//! both taken from the generated CRDs, so there is one source of truth.

use std::sync::OnceLock;

use kube::CustomResourceExt;
use serde_json::Value;

use super::{WebhookReplay, WebhookSource, WebhookSubscription};

struct KindRules {
    structural: jsonschema::Validator,
    cel: kube_cel::CompiledSchema,
    /// The OpenAPI schema itself, for fields it does not know.
    schema: Value,
}

impl KindRules {
    fn new<K: CustomResourceExt>() -> Self {
        let crd = K::crd();
        let schema = crd.spec.versions[0]
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .expect("derived CRDs carry a schema");
        let schema = serde_json::to_value(schema).expect("schema serializes");
        Self {
            // The OpenAPI extensions (nullable, x-kubernetes-*) are unknown keywords to a JSON
            // Schema validator and are ignored; the CEL pass below covers the rules.
            structural: jsonschema::validator_for(&schema).expect("generated schema compiles"),
            cel: kube_cel::compile_schema(&schema),
            schema,
        }
    }

    fn check(&self, object: &Value) -> Vec<String> {
        // As `kubectl apply` with strict field validation: a field the schema does not know is
        // an error (a typo, or a field of a newer version), not silently dropped.
        let mut problems = Vec::new();
        unknown_fields(&self.schema, object, "", &mut problems);
        problems.extend(self.structural.iter_errors(object).map(|e| {
            let path = e
                .instance_path()
                .to_string()
                .trim_start_matches('/')
                .replace('/', ".");
            format!("{path}: {e}")
        }));
        if let Err(errors) = kube_cel::validate_compiled(&self.cel, object, None) {
            problems.extend(errors.into_vec().into_iter().map(|e| e.to_string()));
        }
        problems
    }
}

/// Reports each field of `value` that `schema` does not declare, with the nearest declared name
/// when one is close. Objects whose schema declares no properties (metadata, free-form maps) are
/// not checked.
fn unknown_fields(schema: &Value, value: &Value, path: &str, problems: &mut Vec<String>) {
    let at = |field: &str| {
        if path.is_empty() {
            field.to_owned()
        } else {
            format!("{path}.{field}")
        }
    };
    match value {
        Value::Object(fields) => {
            let Some(known) = schema.get("properties").and_then(Value::as_object) else {
                return;
            };
            for (field, inner) in fields {
                match known.get(field) {
                    Some(field_schema) => unknown_fields(field_schema, inner, &at(field), problems),
                    None if path.is_empty()
                        && matches!(field.as_str(), "apiVersion" | "kind" | "metadata") => {}
                    None => {
                        let hint = nearest(field, known.keys())
                            .map(|name| format!(" (did you mean {name}?)"))
                            .unwrap_or_default();
                        problems.push(format!("{}: unknown field{hint}", at(field)));
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (index, item) in items.iter().enumerate() {
                    unknown_fields(item_schema, item, &format!("{path}[{index}]"), problems);
                }
            }
        }
        _ => {}
    }
}

/// The declared name closest to `field`: the same but for case, or a few edits away.
fn nearest<'a>(field: &str, names: impl Iterator<Item = &'a String>) -> Option<&'a str> {
    names
        .map(|name| {
            let distance = if name.eq_ignore_ascii_case(field) {
                0
            } else {
                strsim::damerau_levenshtein(&field.to_ascii_lowercase(), &name.to_ascii_lowercase())
            };
            (distance, name.as_str())
        })
        .filter(|(distance, name)| *distance <= (name.len() / 3).max(1))
        .min()
        .map(|(_, name)| name)
}

fn rules<K: CustomResourceExt>(cell: &'static OnceLock<KindRules>) -> &'static KindRules {
    cell.get_or_init(KindRules::new::<K>)
}

/// Checks a `WebhookSource` or `WebhookSubscription` (as JSON, before defaulting) against the
/// rules of its CRD. Returns one message per problem, each starting with the field path.
pub fn validate(kind: &str, object: &Value) -> Result<(), Vec<String>> {
    static SOURCE: OnceLock<KindRules> = OnceLock::new();
    static SUBSCRIPTION: OnceLock<KindRules> = OnceLock::new();
    static REPLAY: OnceLock<KindRules> = OnceLock::new();
    let problems = match kind {
        "WebhookSource" => rules::<WebhookSource>(&SOURCE).check(object),
        "WebhookSubscription" => rules::<WebhookSubscription>(&SUBSCRIPTION).check(object),
        "WebhookReplay" => rules::<WebhookReplay>(&REPLAY).check(object),
        other => vec![format!("kind: {other} is not a Hookline kind")],
    };
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn source(spec: Value) -> Value {
        json!({"apiVersion": "hookline.dev/v1alpha1", "kind": "WebhookSource", "metadata": {"name": "s"}, "spec": spec})
    }

    #[test]
    fn valid_source_passes() {
        let object = source(json!({"provider": "stripe", "secretRef": {"name": "s", "key": "k"}}));
        assert_eq!(validate("WebhookSource", &object), Ok(()));
    }

    #[test]
    fn structural_and_cel_rules_both_apply() {
        let object = source(json!({
            "provider": "generic-hmac",
            "secretRef": {"name": "s", "key": "k"},
            "maxBodyBytes": 0,
            "tolerance": "5 minutes",
            "handlers": [{"name": "h", "url": "ftp://x/", "events": ["*"]}],
        }));
        let problems = validate("WebhookSource", &object).unwrap_err().join("\n");
        for expected in [
            "spec.maxBodyBytes: 0 is less than the minimum of 1",
            "spec.tolerance: must be a duration such as 250ms, 5s, 2m, 1h or 1h30m",
            "spec.handlers[0].url: must be an absolute http:// or https:// URL",
            "spec.genericHmac must be set when provider is generic-hmac",
        ] {
            assert!(
                problems.contains(expected),
                "missing {expected:?} in:\n{problems}"
            );
        }
    }

    #[test]
    fn unknown_fields_are_refused_with_the_nearest_name() {
        let object = json!({"apiVersion": "hookline.dev/v1alpha1", "kind": "WebhookSubscription",
        "metadata": {"name": "s", "labels": {"team": "a"}},
        "spec": {
            "url": "https://x.example/h", "events": ["*"], "maxInflight": 4,
            "retryPolicy": {"maxAttempts": 3, "backoff": "fast"},
        }});
        let problems = validate("WebhookSubscription", &object).unwrap_err();
        assert_eq!(
            problems,
            [
                "spec.maxInflight: unknown field (did you mean maxInFlight?)",
                "spec.retryPolicy.backoff: unknown field",
            ]
        );
        let handler = source(
            json!({"provider": "stripe", "secretRef": {"name": "s", "key": "k"},
            "handlers": [{"name": "h", "url": "https://x.example/", "events": ["*"], "evnets": []}]}),
        );
        assert_eq!(
            validate("WebhookSource", &handler).unwrap_err(),
            ["spec.handlers[0].evnets: unknown field (did you mean events?)"]
        );
    }

    #[test]
    fn endpoint_tls_and_oauth2_are_checked_at_admission() {
        let object = json!({"kind": "WebhookSubscription", "spec": {
            "url": "http://x.example/h", "events": ["*"],
            "tls": {},
            "auth": {"oauth2": {"tokenURL": "ftp://auth.example/token", "scopes": ["a b"],
                     "clientIdRef": {"name": "o", "key": "id"}, "clientSecretRef": {"name": "o", "key": "secret"}}},
        }});
        let problems = validate("WebhookSubscription", &object).unwrap_err().join("\n");
        for expected in [
            "tls applies to https:// URLs only",
            "set clientCertificateRef, caBundleRef or serverName",
            "must be an absolute http:// or https:// URL, such as https://auth.example.com/oauth/token",
            "a scope has no spaces",
        ] {
            assert!(problems.contains(expected), "{expected}: {problems}");
        }
        let handler = source(
            json!({"provider": "stripe", "secretRef": {"name": "s", "key": "k"},
            "handlers": [{"name": "h", "url": "http://api/h", "events": ["*"],
                          "tls": {"serverName": "api.internal"}}]}),
        );
        let problems = validate("WebhookSource", &handler).unwrap_err().join("\n");
        assert!(
            problems.contains("tls applies to https:// URLs only"),
            "{problems}"
        );
        let fine = json!({"kind": "WebhookSubscription", "spec": {
            "url": "https://10.0.0.7/h", "events": ["*"],
            "tls": {"clientCertificateRef": {"name": "client-tls"}, "serverName": "billing.internal"},
        }});
        assert_eq!(validate("WebhookSubscription", &fine), Ok(()));
    }

    #[test]
    fn subscription_rules_apply() {
        let object = json!({"kind": "WebhookSubscription", "spec": {
            "url": "https://x.example/h", "events": [],
            "retryPolicy": {"schedule": ["5s"], "exponential": {}},
        }});
        let problems = validate("WebhookSubscription", &object).unwrap_err().join("\n");
        assert!(problems.contains("spec.events"), "{problems}");
        assert!(
            problems.contains("set either schedule or exponential, not both"),
            "{problems}"
        );
    }
}
