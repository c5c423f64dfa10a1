//! Validation without an API server (for `hookline standalone`), with the same rules the API
//! server applies: the CRD's OpenAPI schema (types, enums, bounds, lengths) and its CEL rules,
//! both taken from the generated CRDs, so there is one source of truth.

use std::sync::OnceLock;

use kube::CustomResourceExt;
use serde_json::Value;

use super::{WebhookSource, WebhookSubscription};

struct KindRules {
    structural: jsonschema::Validator,
    cel: kube_cel::CompiledSchema,
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
        }
    }

    fn check(&self, object: &Value) -> Vec<String> {
        let mut problems: Vec<String> = self
            .structural
            .iter_errors(object)
            .map(|e| {
                let path = e
                    .instance_path()
                    .to_string()
                    .trim_start_matches('/')
                    .replace('/', ".");
                format!("{path}: {e}")
            })
            .collect();
        if let Err(errors) = kube_cel::validate_compiled(&self.cel, object, None) {
            problems.extend(errors.into_vec().into_iter().map(|e| e.to_string()));
        }
        problems
    }
}

fn rules<K: CustomResourceExt>(cell: &'static OnceLock<KindRules>) -> &'static KindRules {
    cell.get_or_init(KindRules::new::<K>)
}

/// Checks a `WebhookSource` or `WebhookSubscription` (as JSON, before defaulting) against the
/// rules of its CRD. Returns one message per problem, each starting with the field path.
pub fn validate(kind: &str, object: &Value) -> Result<(), Vec<String>> {
    static SOURCE: OnceLock<KindRules> = OnceLock::new();
    static SUBSCRIPTION: OnceLock<KindRules> = OnceLock::new();
    let problems = match kind {
        "WebhookSource" => rules::<WebhookSource>(&SOURCE).check(object),
        "WebhookSubscription" => rules::<WebhookSubscription>(&SUBSCRIPTION).check(object),
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
