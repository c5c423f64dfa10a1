//! Live configuration for `hookline standalone`: the directory is watched, and read again on
//! SIGHUP. A version that loads and validates replaces the configuration in force within a
//! moment, logged as what changed; one that does not is reported (file, document, field) and the
//! last good one stays in force.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kube::ResourceExt;
use notify::{RecursiveMode, Watcher};
use serde_json::Value;

use super::loader::{self, Config};
use crate::api::SecretKeyRef;
use crate::catalog::egress::EgressRules;
use crate::catalog::{Catalog, CatalogCell, GeneratedSecrets, Secrets};

/// How long a burst of file events (an editor saving) is let settle before reading.
const SETTLE: Duration = Duration::from_millis(200);

/// The holds already warned about (at start, or at a reload), so a reload warns about new ones.
pub struct Warned {
    pub rules: Arc<EgressRules>,
    pub held: Vec<String>,
}

/// Follows `dir` until the process ends, setting `cell` to each good version.
pub async fn follow(
    dir: PathBuf,
    cell: Arc<CatalogCell>,
    pool: sqlx::PgPool,
    mut current: Config,
    mut warned: Warned,
) {
    let (changed, mut changes) = tokio::sync::mpsc::channel::<()>(1);
    // notify calls back on its own thread; a full channel means a reload is already due.
    // Reading the files is an event too (access): only writes, creations and removals count.
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| !e.kind.is_access() && !e.kind.is_other()) {
            let _ = changed.try_send(());
        }
    })
    .and_then(|mut watcher| watcher.watch(&dir, RecursiveMode::NonRecursive).map(|()| watcher));
    let _watcher = match watcher {
        Ok(watcher) => {
            tracing::info!(dir = %dir.display(), "watching the configuration: edits take effect when saved");
            Some(watcher)
        }
        Err(err) => {
            tracing::warn!(dir = %dir.display(), "cannot watch the configuration ({err}); send SIGHUP to reload it");
            None
        }
    };
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    // The problem last reported, so an editor's repeated saves of a broken file say it once.
    let mut reported: Option<String> = None;
    loop {
        let sighup = async {
            match hangup.as_mut() {
                Some(signal) => signal.recv().await,
                None => std::future::pending().await,
            }
        };
        let asked = tokio::select! {
            Some(()) = changes.recv() => {
                tokio::time::sleep(SETTLE).await;
                false
            }
            _ = sighup => {
                tracing::info!("SIGHUP: reading the configuration again");
                true
            }
        };
        while changes.try_recv().is_ok() {}
        let next = match loader::load_dir(&dir) {
            Ok(next) => next,
            Err(err) => {
                let problem = err.to_string();
                if asked || reported.as_ref() != Some(&problem) {
                    tracing::warn!("configuration not reloaded, the last good one stays in force: {problem}");
                }
                reported = Some(problem);
                continue;
            }
        };
        reported = None;
        let differences = changes_between(&current, &next);
        if differences.is_empty() {
            continue;
        }
        for difference in &differences {
            tracing::info!("{difference}");
        }
        let catalog = Catalog::build(
            &next.sources,
            &next.subscriptions,
            &next.secrets,
            GeneratedSecrets::InDatabase,
        );
        let held = super::held_targets(&catalog, &warned.rules).await;
        for problem in held.iter().filter(|p| !warned.held.contains(p)) {
            tracing::warn!("{problem}");
        }
        warned.held = held;
        cell.set(catalog);
        super::replays::sync(&pool, &next.replays).await;
        current = next;
    }
}

/// One resource as compared: its spec, and the data of the Secrets it names.
struct Compared {
    spec: Value,
    secrets: Vec<Option<BTreeMap<String, Vec<u8>>>>,
}

fn compared<'a>(
    spec: Value,
    namespace: &str,
    references: impl Iterator<Item = SecretKeyRef> + 'a,
    secrets: &Secrets,
) -> Compared {
    Compared {
        spec,
        secrets: references
            .map(|r| secrets.data(namespace, &r.name).cloned())
            .collect(),
    }
}

/// What changed between two configurations, one line each: "subscription default/local added",
/// "source default/stripe: secret changed".
pub fn changes_between(old: &Config, new: &Config) -> Vec<String> {
    let resources = |config: &Config| {
        let mut all = BTreeMap::new();
        for source in &config.sources {
            let namespace = source.namespace().unwrap_or_default();
            let handlers = source.spec.handlers.iter().flat_map(|h| {
                h.target
                    .secret_ref
                    .clone()
                    .into_iter()
                    .chain(h.target.endpoint_secrets().into_iter().map(|(_, r)| r))
            });
            let references = source.spec.verification_secrets().cloned().chain(handlers);
            let spec = serde_json::to_value(&source.spec).unwrap_or_default();
            let entry = compared(spec, &namespace, references, &config.secrets);
            all.insert(("source", namespace, source.name_any()), entry);
        }
        for sub in &config.subscriptions {
            let namespace = sub.namespace().unwrap_or_default();
            let spec = serde_json::to_value(&sub.spec).unwrap_or_default();
            let entry = compared(
                spec,
                &namespace,
                sub.spec
                    .target
                    .secret_ref
                    .clone()
                    .into_iter()
                    .chain(sub.spec.target.endpoint_secrets().into_iter().map(|(_, r)| r)),
                &config.secrets,
            );
            all.insert(("subscription", namespace, sub.name_any()), entry);
        }
        for replay in &config.replays {
            let namespace = replay.namespace().unwrap_or_default();
            let spec = serde_json::to_value(&replay.spec).unwrap_or_default();
            let entry = compared(spec, &namespace, std::iter::empty(), &config.secrets);
            all.insert(("replay", namespace, replay.name_any()), entry);
        }
        all
    };
    let (before, after) = (resources(old), resources(new));
    let mut lines = Vec::new();
    for ((kind, namespace, name), now) in &after {
        let what = format!("{kind} {namespace}/{name}");
        match before.get(&(kind, namespace.clone(), name.clone())) {
            None => lines.push(format!("{what} added")),
            Some(was) if was.spec != now.spec => lines.push(format!("{what} changed")),
            Some(was) if was.secrets != now.secrets => lines.push(format!("{what}: secret changed")),
            Some(_) => {}
        }
    }
    for (kind, namespace, name) in before.keys() {
        if !after.contains_key(&(kind, namespace.clone(), name.clone())) {
            lines.push(format!("{kind} {namespace}/{name} removed"));
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(text: &str) -> Config {
        let mut config = Config::default();
        loader::load_text(text, Path::new("test.yaml"), &mut config).unwrap();
        config
    }

    const SECRET: &str =
        "apiVersion: v1\nkind: Secret\nmetadata: {name: stripe}\nstringData: {key: whsec_one}\n---\n";
    const SOURCE: &str = "apiVersion: hookline.dev/v1alpha1\nkind: WebhookSource\nmetadata: {name: stripe}\n\
                          spec: {provider: stripe, secretRef: {name: stripe, key: key}}\n---\n";
    const LOCAL: &str = "apiVersion: hookline.dev/v1alpha1\nkind: WebhookSubscription\nmetadata: {name: local}\n\
                         spec: {url: 'http://127.0.0.1:9999/', events: ['*']}\n";

    #[test]
    fn additions_removals_edits_and_secret_changes_are_named() {
        let before = config(&format!("{SECRET}{SOURCE}"));
        assert!(changes_between(&before, &before).is_empty());
        let added = config(&format!("{SECRET}{SOURCE}{LOCAL}"));
        assert_eq!(
            changes_between(&before, &added),
            ["subscription default/local added"]
        );
        assert_eq!(
            changes_between(&added, &before),
            ["subscription default/local removed"]
        );
        let rotated = config(&format!("{}{SOURCE}", SECRET.replace("whsec_one", "whsec_two")));
        assert_eq!(
            changes_between(&before, &rotated),
            ["source default/stripe: secret changed"]
        );
        let edited = config(&format!(
            "{SECRET}{}",
            SOURCE.replace("provider: stripe", "provider: stripe, tolerance: 1m")
        ));
        assert_eq!(
            changes_between(&before, &edited),
            ["source default/stripe changed"]
        );
    }
}
