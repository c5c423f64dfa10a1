//! `hookline send-test`: a provider's sample event, signed with the source's own secret and
//! posted to the gateway, to watch the whole path without a provider account.

use std::path::PathBuf;

use clap::Args;
use hookline::standalone::loader::{self, Config};
use kube::ResourceExt;

#[derive(Args)]
pub struct SendTestArgs {
    /// A YAML file with the WebhookSource; the Secret it names is read from the same directory,
    /// as `hookline standalone` reads it.
    file: PathBuf,
    /// The event type [default: the first sample one of its handlers routes].
    #[arg(long = "type", value_name = "TYPE")]
    event_type: Option<String>,
    /// Which source of the file, when it holds several.
    #[arg(long)]
    source: Option<String>,
    /// The gateway.
    #[arg(long, env = "HOOKLINE_URL", default_value = "http://localhost:8080")]
    to: String,
}

pub fn send_test(args: SendTestArgs) -> anyhow::Result<()> {
    let dir = args
        .file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let everything = loader::load_dir(dir)?;
    let mut own = Config::default();
    let text = std::fs::read_to_string(&args.file)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", args.file.display()))?;
    loader::load_text(&text, &args.file, &mut own)?;
    let names: Vec<String> = own.sources.iter().map(|s| s.name_any()).collect();
    let name = match (&args.source, names.as_slice()) {
        (Some(wanted), _) if names.contains(wanted) => wanted.clone(),
        (Some(wanted), _) => anyhow::bail!("{} has no WebhookSource {wanted}", args.file.display()),
        (None, [only]) => only.clone(),
        (None, []) => anyhow::bail!("{} holds no WebhookSource", args.file.display()),
        (None, _) => anyhow::bail!(
            "{} holds several sources ({}); choose one with --source",
            args.file.display(),
            names.join(", ")
        ),
    };
    let source = everything
        .sources
        .iter()
        .find(|s| s.name_any() == name)
        .ok_or_else(|| anyhow::anyhow!("source {name} not loaded"))?;
    let namespace = source
        .namespace()
        .unwrap_or_else(|| loader::DEFAULT_NAMESPACE.into());
    let secret = everything.secrets.resolve(&namespace, &source.spec.secret_ref)?;
    let verifier = hookline::verify::SourceVerifier::new(
        source.spec.provider,
        source.spec.generic_hmac.as_ref(),
        &[secret.as_str()],
        source.spec.tolerance.get(),
    )
    .map_err(|e| anyhow::anyhow!("the secret of {namespace}/{name}: {e}"))?;
    let sample = hookline::samples::signed(
        source.spec.provider,
        &verifier,
        args.event_type.as_deref(),
        hookline::samples::routed_by(&source.spec),
    )?;
    let url = format!("{}/ingest/{namespace}/{name}", args.to.trim_end_matches('/'));
    let runtime = tokio::runtime::Runtime::new()?;
    let (status, answer) = runtime.block_on(async {
        let mut request = reqwest::Client::new().post(&url).body(sample.body);
        for (header, value) in &sample.headers {
            request = request.header(header, value);
        }
        let response = request
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("cannot post to {url}: {e}"))?;
        let status = response.status();
        anyhow::Ok((status, response.text().await.unwrap_or_default()))
    })?;
    println!("sent a sample {} to {url}: {status} {answer}", sample.event_type);
    if !status.is_success() {
        anyhow::bail!("the gateway answered {status}");
    }
    Ok(())
}
