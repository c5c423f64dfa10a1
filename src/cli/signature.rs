//! `hookline sign` and `hookline verify`: a provider's signature headers for a body, and the
//! check Hookline makes, for people integrating with it.

use std::path::PathBuf;

use clap::Args;
use hookline::api::{Duration, Provider};

use super::read_token;

#[derive(Args)]
pub struct SchemeArgs {
    /// Signature scheme.
    #[arg(
        long,
        value_parser = ["stripe", "svix", "clerk", "resend", "standard-webhooks", "github"],
        required_unless_present = "source"
    )]
    scheme: Option<String>,
    /// A YAML file with a WebhookSource: its provider and genericHmac settings are used (the
    /// way to sign and verify generic HMAC schemes).
    #[arg(long, value_name = "FILE", conflicts_with = "scheme")]
    source: Option<PathBuf>,
    /// The signing secret (prefer HOOKLINE_SECRET or --secret-file: command lines are visible).
    #[arg(
        long,
        env = "HOOKLINE_SECRET",
        hide_env_values = true,
        required_unless_present = "secret_file"
    )]
    secret: Option<String>,
    #[arg(long, value_name = "FILE", conflicts_with = "secret")]
    secret_file: Option<PathBuf>,
    /// The body, byte for byte ('-' for standard input).
    #[arg(long, short = 'f', value_name = "FILE", default_value = "-")]
    body: PathBuf,
}

impl SchemeArgs {
    /// The provider, and generic HMAC settings when the source has them.
    fn scheme(&self) -> anyhow::Result<(Provider, Option<hookline::api::GenericHmac>)> {
        if let Some(path) = &self.source {
            let mut config = hookline::standalone::loader::Config::default();
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
            hookline::standalone::loader::load_text(&text, path, &mut config)?;
            let source = config
                .sources
                .into_iter()
                .next()
                .ok_or_else(|| anyhow::anyhow!("{} holds no WebhookSource", path.display()))?;
            return Ok((source.spec.provider, source.spec.generic_hmac));
        }
        let scheme = self.scheme.as_deref().unwrap_or_default();
        let provider = serde_json::from_value(serde_json::Value::from(scheme))
            .expect("value_parser admits providers only");
        Ok((provider, None))
    }

    fn secret(&self) -> anyhow::Result<String> {
        Ok(read_token(self.secret.clone(), self.secret_file.clone(), "--secret-file")?.unwrap_or_default())
    }

    fn body(&self) -> anyhow::Result<Vec<u8>> {
        if self.body.as_os_str() == "-" {
            let mut body = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut body)?;
            Ok(body)
        } else {
            std::fs::read(&self.body).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", self.body.display()))
        }
    }
}

#[derive(Args)]
pub struct SignArgs {
    #[command(flatten)]
    scheme: SchemeArgs,
    /// Event id for schemes that send one in a header [default: a new msg_ id].
    #[arg(long)]
    id: Option<String>,
    /// Unix timestamp to sign [default: now].
    #[arg(long)]
    timestamp: Option<i64>,
}

#[derive(Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    scheme: SchemeArgs,
    /// A request header, as 'Name: value'; repeat for each.
    #[arg(long = "header", short = 'H', value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// How far the signed timestamp may be from now.
    #[arg(long, default_value = "5m")]
    tolerance: Duration,
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

pub fn sign(args: SignArgs) -> anyhow::Result<()> {
    let body = args.scheme.body()?;
    let id = args
        .id
        .unwrap_or_else(|| format!("msg_{}", uuid::Uuid::new_v4().simple()));
    let timestamp = args.timestamp.unwrap_or_else(unix_now);
    let (provider, generic_hmac) = args.scheme.scheme()?;
    let headers = hookline::verify::sign_headers(
        provider,
        generic_hmac.as_ref(),
        &args.scheme.secret()?,
        &id,
        timestamp,
        &body,
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    for (name, value) in headers {
        println!("{name}: {value}");
    }
    Ok(())
}

pub fn verify(args: VerifyArgs) -> anyhow::Result<()> {
    let body = args.scheme.body()?;
    let secret = args.scheme.secret()?;
    let (provider, generic_hmac) = args.scheme.scheme()?;
    let verifier = hookline::verify::SourceVerifier::new(
        provider,
        generic_hmac.as_ref(),
        &[secret.as_str()],
        args.tolerance.get(),
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut headers = http::HeaderMap::new();
    for line in &args.headers {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| anyhow::anyhow!("{line:?} is not 'Name: value'"))?;
        headers.append(
            http::HeaderName::from_bytes(name.trim().as_bytes())?,
            http::HeaderValue::from_str(value.trim())?,
        );
    }
    match verifier.verify(&headers, &body, unix_now()) {
        Ok(event) => {
            println!("verified: event id {}, type {}", event.id, event.event_type);
            Ok(())
        }
        Err(rejection) => anyhow::bail!("not verified ({}): {rejection}", rejection.reason()),
    }
}
