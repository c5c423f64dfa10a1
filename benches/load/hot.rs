//! Instructions per call of the CPU-bound hot paths, counted by callgrind: verifying a Stripe
//! webhook (parse, HMAC-SHA256, constant-time compare, JSON id and type), signing a delivery
//! per Standard Webhooks, and, in a namespace of 1,000 subscriptions, finding the ones an event
//! goes to and finding one by its name (what every delivery does). Unlike time, instruction counts do not swing with a noisy machine, so
//! a change to these paths shows up exactly. The benchmark re-runs itself under valgrind with
//! HOOKLINE_BENCH_HOT set, once with no calls and once with many; the difference per call is
//! the figure.

use std::hint::black_box;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use axum::http::HeaderMap;
use hookline::api::{Provider, TargetKey, WebhookSubscription};
use hookline::catalog::{Catalog, GeneratedSecrets, Secrets};
use hookline::verify::{SigningKey, SourceVerifier, standard_webhooks, stripe};

use crate::rig::{STRIPE_SECRET, SUBSCRIPTION_SECRET, now_unix, stripe_event};
use crate::{progress, report};

/// Set to `<operation>:<calls>` in the environment of the process valgrind runs.
pub(crate) const ROLE: &str = "HOOKLINE_BENCH_HOT";
const CALLS: u64 = 2_000;
const OPERATIONS: [&str; 4] = ["verify_stripe", "sign_delivery", "route_event", "find_target"];
/// Subscriptions in the catalog `route_event` and `find_target` read.
const SUBSCRIPTIONS: usize = 1_000;
/// Kinds of event they ask for: each event type reaches `SUBSCRIPTIONS / EVENT_KINDS` of them.
const EVENT_KINDS: usize = 50;

/// Runs `operation` `calls` times (the process valgrind watches).
pub(crate) fn run(role: &str) -> anyhow::Result<()> {
    let (operation, calls) = role
        .split_once(':')
        .ok_or_else(|| anyhow::anyhow!("{ROLE} is <operation>:<calls>"))?;
    let calls: u64 = calls.parse()?;
    let body = stripe_event(1, "invoice.paid");
    let now = now_unix();
    match operation {
        "verify_stripe" => {
            let verifier =
                SourceVerifier::new(Provider::Stripe, None, &[STRIPE_SECRET], Duration::from_secs(300))?;
            let key = SigningKey::from_text(STRIPE_SECRET)?;
            let mut headers = HeaderMap::new();
            headers.insert("stripe-signature", stripe::sign(&key, now, &body).parse()?);
            for _ in 0..calls {
                black_box(
                    verifier
                        .verify(black_box(&headers), black_box(&body), now)
                        .is_ok(),
                );
            }
        }
        "sign_delivery" => {
            let keys = standard_webhooks::decode_secrets(SUBSCRIPTION_SECRET)?;
            for _ in 0..calls {
                black_box(standard_webhooks::sign_all(
                    black_box(&keys),
                    "01a2328d-6da9-76d9-bebe-35be1c2bd562",
                    now,
                    black_box(&body),
                ));
            }
        }
        "route_event" => {
            let catalog = many_subscriptions()?;
            for _ in 0..calls {
                let routed = catalog
                    .targets_for(black_box("tenants"), None, black_box("kind7.created"))
                    .count();
                black_box(routed);
            }
        }
        "find_target" => {
            let catalog = many_subscriptions()?;
            let key = TargetKey::subscription("tenants", &format!("sub-{}", SUBSCRIPTIONS / 2));
            for _ in 0..calls {
                black_box(catalog.target(black_box(&key)).is_some());
            }
        }
        other => anyhow::bail!("unknown operation {other}"),
    }
    Ok(())
}

/// A namespace of `SUBSCRIPTIONS` subscriptions, as a platform with one per customer endpoint
/// has: each asks for two event types of one kind by name, every tenth for all of its kind.
fn many_subscriptions() -> anyhow::Result<Catalog> {
    let subscriptions = (0..SUBSCRIPTIONS)
        .map(|i| {
            let kind = i % EVENT_KINDS;
            let events = if i % 10 == 0 {
                format!("['kind{kind}.*']")
            } else {
                format!("['kind{kind}.created', 'kind{kind}.deleted']")
            };
            serde_yaml::from_str::<WebhookSubscription>(&format!(
                "apiVersion: hookline.dev/v1alpha1\nkind: WebhookSubscription\nmetadata: {{name: sub-{i}, namespace: tenants}}\nspec: {{url: 'https://customer-{i}.example/hooks', events: {events}}}"
            ))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let catalog = Catalog::build(
        &[],
        &subscriptions,
        &Secrets::default(),
        GeneratedSecrets::InDatabase,
    );
    anyhow::ensure!(
        catalog.targets_for("tenants", None, "kind7.created").count() == SUBSCRIPTIONS / EVENT_KINDS,
        "kind7.created reaches one subscription in {EVENT_KINDS}"
    );
    Ok(catalog)
}

/// Total instructions of this benchmark run as `<operation>:<calls>` under callgrind.
fn instructions(dir: &Path, operation: &str, calls: u64) -> anyhow::Result<u64> {
    let out = dir.join(format!("callgrind-{operation}-{calls}.out"));
    let status = Command::new("valgrind")
        .args(["--tool=callgrind", "--quiet"])
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(std::env::current_exe()?)
        .env(ROLE, format!("{operation}:{calls}"))
        .status()?;
    anyhow::ensure!(status.success(), "valgrind on {operation}: {status}");
    let text = std::fs::read_to_string(&out)?;
    text.lines()
        .find_map(|line| line.strip_prefix("summary:")?.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no summary line in {}", out.display()))
}

pub(crate) fn measure(dir: &Path) -> anyhow::Result<()> {
    if Command::new("valgrind").arg("--version").output().is_err() {
        progress("valgrind is not installed: no instruction counts (apt install valgrind)");
        return Ok(());
    }
    for operation in OPERATIONS {
        let baseline = instructions(dir, operation, 0)?;
        let measured = instructions(dir, operation, CALLS)?;
        let per_call = measured.saturating_sub(baseline) as f64 / CALLS as f64;
        report(
            &format!("{operation}_instructions"),
            per_call,
            "instructions/call",
        );
    }
    Ok(())
}
