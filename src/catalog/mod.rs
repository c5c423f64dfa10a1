//! The resolved configuration a node runs on: every source with its verifier, and every delivery
//! target (handlers and subscriptions), resolved once per configuration change so the request
//! path and the dispatcher only read. [`CatalogCell`] holds the one in force; the cluster's
//! watches (`reflect`) or standalone's files write it, the gateway and the dispatcher read it.

mod cell;
pub mod egress;
pub mod endpoint;
pub mod expression;
pub mod hold;
pub mod reflect;
mod routes;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use ipnet::IpNet;
use wildmatch::WildMatch;

use crate::api::{
    DeliveryTarget, Provider, SecretKeyRef, TargetKey, TargetKind, WebhookSource, WebhookSubscription,
};
use crate::verify::{SecretError, SigningKey, SourceVerifier, standard_webhooks};
pub use cell::CatalogCell;
use endpoint::{Endpoint, EndpointProblem};
use expression::{TargetExpressions, Variables};
use routes::Routes;

/// Secret values by namespace, Secret name and key.
#[derive(Clone, Debug, Default)]
pub struct Secrets(HashMap<(String, String), BTreeMap<String, Vec<u8>>>);

/// Why a configured secret cannot be used. Messages name the Secret and key, never the value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SecretUnavailable {
    #[error("Secret {namespace}/{name} not found")]
    NotFound { namespace: String, name: String },
    #[error("Secret {namespace}/{name} has no key {key:?}")]
    NoKey {
        namespace: String,
        name: String,
        key: String,
    },
    #[error("Secret {namespace}/{name} key {key:?} is not UTF-8 text")]
    NotText {
        namespace: String,
        name: String,
        key: String,
    },
    #[error("Secret {namespace}/{name} key {key:?}: {error}")]
    Unusable {
        namespace: String,
        name: String,
        key: String,
        error: SecretError,
    },
    #[error("waiting for the controller to generate the signing secret")]
    NotGeneratedYet,
    #[error("Secret {namespace}/{name} key {key:?} {why}")]
    Invalid {
        namespace: String,
        name: String,
        key: String,
        why: String,
    },
}

impl Secrets {
    /// Adds keys of a Secret (the keys of one Secret may come from several mirrors).
    pub fn insert(&mut self, namespace: &str, name: &str, data: BTreeMap<String, Vec<u8>>) {
        self.0
            .entry((namespace.to_owned(), name.to_owned()))
            .or_default()
            .extend(data);
    }

    /// Every key of a Secret.
    pub fn data(&self, namespace: &str, name: &str) -> Option<&BTreeMap<String, Vec<u8>>> {
        self.0.get(&(namespace.to_owned(), name.to_owned()))
    }

    /// The value of a key (trimmed), or why it cannot be used.
    pub fn resolve(&self, namespace: &str, reference: &SecretKeyRef) -> Result<String, SecretUnavailable> {
        let data = self
            .0
            .get(&(namespace.to_owned(), reference.name.clone()))
            .ok_or_else(|| SecretUnavailable::NotFound {
                namespace: namespace.to_owned(),
                name: reference.name.clone(),
            })?;
        let value = data.get(&reference.key).ok_or_else(|| SecretUnavailable::NoKey {
            namespace: namespace.to_owned(),
            name: reference.name.clone(),
            key: reference.key.clone(),
        })?;
        String::from_utf8(value.clone())
            .map(|text| text.trim().to_owned())
            .map_err(|_| SecretUnavailable::NotText {
                namespace: namespace.to_owned(),
                name: reference.name.clone(),
                key: reference.key.clone(),
            })
    }
}

/// A place deliveries go, with its compiled event filter.
#[derive(Debug)]
pub struct Target {
    pub key: TargetKey,
    pub spec: DeliveryTarget,
    /// Keys to sign deliveries with, from `secretRef`; `None` when the target has no secretRef
    /// (a generated secret is used). Several keys while rotating.
    pub signing: Option<Result<Vec<SigningKey>, SecretUnavailable>>,
    /// Private, loopback and cluster addresses may be delivered to: always for handlers, for
    /// subscriptions with `allowPrivateNetworks`.
    pub allow_private_networks: bool,
    /// `filter`, `transform` and `ordering.key`, compiled.
    pub expressions: TargetExpressions,
    /// Its headers, TLS and OAuth2 settings, resolved, or the first that does not resolve.
    pub endpoint: Result<Endpoint, EndpointProblem>,
    patterns: Vec<WildMatch>,
    /// Subscriptions only: the sources it takes events from (empty: all, and published ones).
    sources: Vec<String>,
}

impl Target {
    fn new(
        key: TargetKey,
        spec: DeliveryTarget,
        sources: Vec<String>,
        secrets: &Secrets,
        generated: GeneratedSecrets,
        generated_name: Option<&str>,
    ) -> Self {
        let patterns = spec.events.iter().map(|p| WildMatch::new(p)).collect();
        let generated_ref = generated_name.map(|name| SecretKeyRef {
            name: name.to_owned(),
            key: crate::api::GENERATED_SECRET_KEY.to_owned(),
        });
        let signing = match (spec.secret_ref.clone().or(generated_ref), generated) {
            (None, GeneratedSecrets::InDatabase) => None,
            (None, GeneratedSecrets::FromStatus) => Some(Err(SecretUnavailable::NotGeneratedYet)),
            (Some(reference), _) => Some(resolve_signing(secrets, &key.namespace, &reference)),
        };
        let expressions = TargetExpressions::of(&spec);
        let endpoint = endpoint::resolve(secrets, &key.namespace, &spec);
        Self {
            allow_private_networks: key.kind == TargetKind::Handler,
            key,
            spec,
            signing,
            expressions,
            endpoint,
            patterns,
            sources,
        }
    }

    /// Whether it takes events from this source (`""`: published events).
    pub fn receives_from(&self, source: &str) -> bool {
        match self.key.kind {
            TargetKind::Handler => self.key.source() == Some(source),
            TargetKind::Subscription => self.sources.is_empty() || self.sources.iter().any(|s| s == source),
        }
    }

    /// Whether one of its `events` patterns names operational events (`hookline.…`): only
    /// those get them, not a catch-all `*`.
    pub fn asks_for_operational_events(&self) -> bool {
        self.spec
            .events
            .iter()
            .any(|p| p.starts_with(crate::api::notice::PREFIX))
    }

    pub fn accepts(&self, event_type: &str) -> bool {
        self.patterns.iter().any(|p| p.matches(event_type))
    }

    /// What becomes of an event its `events` accept, by its `filter`. `variables` are built
    /// only when a filter needs them, once per event.
    pub fn select(&self, variables: &mut dyn FnMut() -> Arc<Variables>) -> Selection {
        let Some(filter) = &self.expressions.filter else {
            // A filter that does not compile selects nothing safely: the event is recorded
            // for this target, unsent, with the reason.
            return match self.expressions.problem_of("filter") {
                Some(problem) => Selection::Failed(format!("filter does not compile: {}", problem.message)),
                None => Selection::Deliver,
            };
        };
        match filter.matches(&variables()) {
            Ok(true) => Selection::Deliver,
            Ok(false) => Selection::Skip,
            Err(why) => Selection::Failed(format!("filter: {why}")),
        }
    }
}

/// The verdict of a target's filter on one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    Deliver,
    Skip,
    /// The filter failed for this event: recorded as `filtered_error` with the reason.
    Failed(String),
}

/// Signing keys from a Secret value (see [`standard_webhooks::decode_secrets`]).
fn resolve_signing(
    secrets: &Secrets,
    namespace: &str,
    reference: &SecretKeyRef,
) -> Result<Vec<SigningKey>, SecretUnavailable> {
    let value = secrets.resolve(namespace, reference)?;
    standard_webhooks::decode_secrets(&value).map_err(|error| SecretUnavailable::Unusable {
        namespace: namespace.to_owned(),
        name: reference.name.clone(),
        key: reference.key.clone(),
        error,
    })
}

/// Where the signing secret of a target without `secretRef` comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GeneratedSecrets {
    /// The dispatcher generates one and keeps it in Postgres (standalone: no controller).
    InDatabase,
    /// The controller generates one into a Secret named in the resource's status.
    FromStatus,
}

fn handler_generated_secret<'a>(source: &'a WebhookSource, handler: &str) -> Option<&'a str> {
    let status = source.status.as_ref()?;
    let handler = status.handlers.iter().find(|h| h.name == handler)?;
    handler.health.generated_secret_name.as_deref()
}

/// One source, ready to verify requests.
#[derive(Debug)]
pub struct Source {
    pub namespace: String,
    pub name: String,
    pub provider: Provider,
    pub max_body_bytes: usize,
    /// Who may post to it (`allowedSourceRanges`).
    pub senders: Senders,
    /// The verifier, built from the verification secrets that resolve, or why none does
    /// (answered with 503).
    pub verifier: Result<SourceVerifier, SecretUnavailable>,
    /// Verification secrets that do not resolve while others do (a rotation half done):
    /// requests are verified with the others.
    pub unresolved: Vec<SecretUnavailable>,
    /// The request headers its scheme signs with (lowercase), never shown in clear.
    pub signature_headers: Vec<String>,
    pub handlers: Vec<Target>,
}

#[derive(Debug, Default)]
pub struct Catalog {
    sources: HashMap<(String, String), Arc<Source>>,
    subscriptions: HashMap<String, Subscriptions>,
}

/// A namespace's subscriptions, found by name (every delivery looks its target up) and by the
/// event types they ask for (every event is routed).
#[derive(Debug, Default)]
struct Subscriptions {
    targets: Vec<Target>,
    by_name: HashMap<String, usize>,
    routes: Routes,
}

impl Subscriptions {
    fn new(targets: Vec<Target>) -> Self {
        let mut by_name = HashMap::new();
        for (i, target) in targets.iter().enumerate() {
            // The first of a name, should a configuration repeat one (Kubernetes cannot).
            by_name.entry(target.key.name.clone()).or_insert(i);
        }
        let routes = Routes::new(
            targets
                .iter()
                .enumerate()
                .flat_map(|(i, t)| t.spec.events.iter().map(move |p| (i, p.as_str()))),
        );
        Self {
            targets,
            by_name,
            routes,
        }
    }
}

fn namespace_of<K: kube::ResourceExt>(resource: &K) -> String {
    resource.namespace().unwrap_or_else(|| "default".to_owned())
}

/// Parses an `allowedSourceRanges` entry: a CIDR range or a single address.
pub fn parse_range(entry: &str) -> Option<IpNet> {
    entry
        .parse::<IpNet>()
        .ok()
        .or_else(|| entry.parse::<std::net::IpAddr>().ok().map(IpNet::from))
}

/// The headers a provider's scheme carries its signature in (lowercase).
fn signature_headers(provider: Provider, generic: Option<&crate::api::GenericHmac>) -> Vec<String> {
    let fixed: &[&str] = match provider {
        Provider::Stripe => &["stripe-signature"],
        Provider::Clerk | Provider::Resend | Provider::Svix => &["svix-signature"],
        Provider::StandardWebhooks => &["webhook-signature"],
        Provider::Github => &["x-hub-signature-256", "x-hub-signature"],
        Provider::GenericHmac => &[],
    };
    fixed
        .iter()
        .map(|h| (*h).to_owned())
        .chain(generic.map(|g| g.header.to_ascii_lowercase()))
        .collect()
}

/// Who may post to a source, from its `allowedSourceRanges`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Senders {
    /// No ranges given.
    Anyone,
    Within(Vec<IpNet>),
    /// Entries that are neither an address nor a range: nobody may post until they are fixed
    /// (an unreadable allowlist must not allow more than it says).
    Invalid(Vec<String>),
}

impl Senders {
    pub fn from_entries(entries: &[String]) -> Self {
        if entries.is_empty() {
            return Self::Anyone;
        }
        let invalid: Vec<String> = entries
            .iter()
            .filter(|e| parse_range(e).is_none())
            .cloned()
            .collect();
        if !invalid.is_empty() {
            return Self::Invalid(invalid);
        }
        Self::Within(entries.iter().filter_map(|e| parse_range(e)).collect())
    }

    pub fn admits(&self, client: std::net::IpAddr) -> bool {
        match self {
            Self::Anyone => true,
            Self::Within(ranges) => ranges.iter().any(|net| net.contains(&client)),
            Self::Invalid(_) => false,
        }
    }

    /// Why nobody may post, when entries do not parse.
    pub fn problem(&self) -> Option<String> {
        match self {
            Self::Invalid(entries) => Some(format!(
                "allowedSourceRanges holds entries that are neither an address nor a CIDR range ({}); every request is refused until they are fixed",
                entries.join(", ")
            )),
            _ => None,
        }
    }
}

impl Catalog {
    pub fn build(
        sources: &[WebhookSource],
        subscriptions: &[WebhookSubscription],
        secrets: &Secrets,
        generated: GeneratedSecrets,
    ) -> Self {
        let mut catalog = Catalog::default();
        for source in sources {
            let namespace = namespace_of(source);
            let name = source.metadata.name.clone().unwrap_or_default();
            let spec = &source.spec;
            // A secret that does not resolve (a rotation half done) does not stop verification
            // with the ones that do.
            let (resolved, unresolved): (Vec<_>, Vec<_>) = spec
                .verification_secrets()
                .map(|r| secrets.resolve(&namespace, r))
                .partition(Result::is_ok);
            let values: Vec<String> = resolved.into_iter().flatten().collect();
            let unresolved: Vec<SecretUnavailable> = unresolved.into_iter().filter_map(Result::err).collect();
            let verifier = match unresolved.first() {
                // None resolves: the source cannot verify anything.
                Some(first) if values.is_empty() => Err(first.clone()),
                _ => Ok(values),
            }
            .and_then(|values| {
                let values: Vec<&str> = values.iter().map(String::as_str).collect();
                SourceVerifier::new(
                    spec.provider,
                    spec.generic_hmac.as_ref(),
                    &values,
                    spec.tolerance.get().min(crate::api::source::MAX_TOLERANCE.get()),
                )
                .map_err(|error| SecretUnavailable::Unusable {
                    namespace: namespace.clone(),
                    name: spec.secret_ref.name.clone(),
                    key: spec.secret_ref.key.clone(),
                    error,
                })
            });
            let handlers = spec
                .handlers
                .iter()
                .map(|h| {
                    Target::new(
                        TargetKey::handler(&namespace, &name, &h.name),
                        h.target.clone(),
                        vec![],
                        secrets,
                        generated,
                        handler_generated_secret(source, &h.name),
                    )
                })
                .collect();
            let entry = Source {
                namespace: namespace.clone(),
                name: name.clone(),
                provider: spec.provider,
                max_body_bytes: spec.max_body_bytes as usize,
                senders: Senders::from_entries(&spec.allowed_source_ranges),
                signature_headers: signature_headers(spec.provider, spec.generic_hmac.as_ref()),
                unresolved: if verifier.is_ok() { unresolved } else { Vec::new() },
                verifier,
                handlers,
            };
            catalog.sources.insert((namespace, name), Arc::new(entry));
        }
        let mut by_namespace: HashMap<String, Vec<Target>> = HashMap::new();
        for sub in subscriptions {
            let namespace = namespace_of(sub);
            let target = Target::new(
                TargetKey::subscription(&namespace, sub.metadata.name.as_deref().unwrap_or_default()),
                sub.spec.target.clone(),
                sub.spec.sources.clone(),
                secrets,
                generated,
                sub.status
                    .as_ref()
                    .and_then(|s| s.health.generated_secret_name.as_deref()),
            );
            let target = Target {
                allow_private_networks: sub.spec.allow_private_networks,
                ..target
            };
            by_namespace.entry(namespace).or_default().push(target);
        }
        catalog.subscriptions = by_namespace
            .into_iter()
            .map(|(namespace, targets)| (namespace, Subscriptions::new(targets)))
            .collect();
        catalog
    }

    pub fn source(&self, namespace: &str, name: &str) -> Option<Arc<Source>> {
        self.sources
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    /// A target by its key.
    pub fn target(&self, key: &TargetKey) -> Option<&Target> {
        match key.kind {
            TargetKind::Handler => {
                let source = self
                    .sources
                    .get(&(key.namespace.clone(), key.source()?.to_owned()))?;
                source.handlers.iter().find(|t| t.key.name == key.name)
            }
            TargetKind::Subscription => {
                let subscriptions = self.subscriptions.get(&key.namespace)?;
                Some(&subscriptions.targets[*subscriptions.by_name.get(&key.name)?])
            }
        }
    }

    /// Every target: handlers, then subscriptions.
    pub fn targets(&self) -> impl Iterator<Item = &Target> {
        let handlers = self.sources.values().flat_map(|s| &s.handlers);
        handlers.chain(self.subscriptions.values().flat_map(|s| &s.targets))
    }

    pub fn sources(&self) -> impl Iterator<Item = &Arc<Source>> {
        self.sources.values()
    }

    /// Every target an event goes to: the source's matching handlers, then the namespace's
    /// matching subscriptions. `source` is `None` for published events.
    pub fn targets_for<'a>(
        &'a self,
        namespace: &str,
        source: Option<&'a Source>,
        event_type: &'a str,
    ) -> impl Iterator<Item = &'a Target> {
        let handlers = source.into_iter().flat_map(|s| &s.handlers);
        let subscriptions = self
            .subscriptions
            .get(namespace)
            .into_iter()
            .flat_map(move |s| s.routes.candidates(event_type).map(|i| &s.targets[i]))
            .filter(move |t| t.receives_from(source.map_or("", |s| s.name.as_str())));
        handlers
            .chain(subscriptions)
            .filter(move |t| t.accepts(event_type))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(yaml: &str) -> WebhookSource {
        serde_yaml::from_str(yaml).expect("source YAML")
    }

    fn subscription(name: &str, events: &str, sources: &str) -> WebhookSubscription {
        serde_yaml::from_str(&format!(
            "apiVersion: hookline.dev/v1alpha1\nkind: WebhookSubscription\nmetadata: {{name: {name}, namespace: billing}}\nspec: {{url: 'https://x.example/', events: {events}, sources: {sources}}}"
        ))
        .expect("subscription YAML")
    }

    fn catalog() -> Catalog {
        let stripe = source(
            "apiVersion: hookline.dev/v1alpha1\nkind: WebhookSource\nmetadata: {name: stripe, namespace: billing}\nspec:\n  provider: stripe\n  secretRef: {name: s, key: k}\n  allowedSourceRanges: [10.0.0.0/8, 192.0.2.7]\n  handlers:\n  - {name: invoices, url: 'http://a/', events: ['invoice.*']}\n  - {name: all, url: 'http://b/', events: ['*']}\n",
        );
        let mut secrets = Secrets::default();
        secrets.insert(
            "billing",
            "s",
            BTreeMap::from([("k".to_owned(), b"whsec_abc\n".to_vec())]),
        );
        let subs = [
            subscription("paid", "['invoice.paid']", "[]"),
            subscription("only-github", "['*']", "[github]"),
            subscription("orders", "['order.*']", "[]"),
        ];
        Catalog::build(&[stripe], &subs, &secrets, GeneratedSecrets::InDatabase)
    }

    fn names(catalog: &Catalog, source: Option<&Source>, event_type: &str) -> Vec<String> {
        catalog
            .targets_for("billing", source, event_type)
            .map(|t| t.key.name.clone())
            .collect()
    }

    #[test]
    fn targets_are_selected_by_glob_and_source() {
        let catalog = catalog();
        let stripe = catalog.source("billing", "stripe").expect("source");
        assert_eq!(
            names(&catalog, Some(&stripe), "invoice.paid"),
            ["stripe/invoices", "stripe/all", "paid"]
        );
        assert_eq!(
            names(&catalog, Some(&stripe), "invoice.payment_failed"),
            ["stripe/invoices", "stripe/all"]
        );
        assert_eq!(names(&catalog, Some(&stripe), "customer.created"), ["stripe/all"]);
        // Published events reach subscriptions without a sources filter only.
        assert_eq!(names(&catalog, None, "order.created"), ["orders"]);
        assert!(names(&catalog, None, "anything").is_empty());
        assert!(
            catalog
                .targets_for("other", None, "order.created")
                .next()
                .is_none()
        );
    }

    #[test]
    fn headers_resolve_from_secrets_or_name_the_missing_one() {
        let sub: WebhookSubscription = serde_yaml::from_str(
            "apiVersion: hookline.dev/v1alpha1\nkind: WebhookSubscription\nmetadata: {name: crm, namespace: billing}\n\
             spec: {url: 'https://x.example/', events: ['*'], headers: [{name: X-Api-Key, valueFrom: {secretKeyRef: {name: api, key: token}}}, {name: X-Team, value: billing}]}",
        )
        .unwrap();
        let mut secrets = Secrets::default();
        let missing = Catalog::build(
            &[],
            std::slice::from_ref(&sub),
            &secrets,
            GeneratedSecrets::InDatabase,
        );
        let target = missing.targets().next().unwrap();
        assert_eq!(
            target.endpoint.as_ref().unwrap_err().to_string(),
            "header X-Api-Key: Secret billing/api not found"
        );
        secrets.insert(
            "billing",
            "api",
            BTreeMap::from([("token".to_owned(), b"s3cret\n".to_vec())]),
        );
        let resolved = Catalog::build(&[], &[sub], &secrets, GeneratedSecrets::InDatabase);
        let headers = resolved
            .targets()
            .next()
            .unwrap()
            .endpoint
            .as_ref()
            .unwrap()
            .headers
            .clone();
        assert_eq!(headers.len(), 2);
        assert_eq!(
            (headers[0].0.as_str(), headers[0].1.to_str().unwrap()),
            ("x-api-key", "s3cret")
        );
        assert!(
            headers[0].1.is_sensitive(),
            "a Secret's value is marked sensitive"
        );
        assert!(
            !format!("{:?}", headers[0].1).contains("s3cret"),
            "and kept out of Debug"
        );
        assert_eq!(headers[1].1, "billing");
    }

    #[test]
    fn source_ranges_that_do_not_parse_admit_nobody() {
        let entries = |list: &[&str]| list.iter().map(|e| e.to_string()).collect::<Vec<_>>();
        let client = "203.0.113.9".parse().unwrap();
        assert!(Senders::from_entries(&[]).admits(client));
        assert!(Senders::from_entries(&entries(&["203.0.113.0/24"])).admits(client));
        let invalid = Senders::from_entries(&entries(&["203.0.113.0/24", "office"]));
        assert!(
            !invalid.admits(client),
            "one bad entry closes the source, not opens it"
        );
        assert!(invalid.problem().unwrap().contains("office"));
        let all_invalid = Senders::from_entries(&entries(&["office", "10.0.0.0/33"]));
        assert!(!all_invalid.admits(client));
    }

    #[test]
    fn secrets_resolve_trimmed_and_problems_name_the_secret() {
        let catalog = catalog();
        let stripe = catalog.source("billing", "stripe").unwrap();
        assert!(stripe.verifier.is_ok());
        assert!(stripe.senders.admits("10.1.2.3".parse().unwrap()));
        assert!(stripe.senders.admits("192.0.2.7".parse().unwrap()));
        assert!(!stripe.senders.admits("192.0.2.8".parse().unwrap()));
        let lonely = source(
            "apiVersion: hookline.dev/v1alpha1\nkind: WebhookSource\nmetadata: {name: gh, namespace: ci}\nspec: {provider: github, secretRef: {name: gh-secret, key: token}}",
        );
        let catalog = Catalog::build(&[lonely], &[], &Secrets::default(), GeneratedSecrets::InDatabase);
        let problem = catalog.source("ci", "gh").unwrap().verifier.clone().unwrap_err();
        assert_eq!(problem.to_string(), "Secret ci/gh-secret not found");
    }
}
