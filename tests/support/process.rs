//! `hookline standalone` as a real process, the way it runs in production, on a test database.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running gateway process; killed when dropped.
pub struct GatewayProcess {
    pub child: Child,
    pub base: String,
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `hookline standalone -f config` on `database_url` with a 1 s lease margin (so a killed
/// process's deliveries are taken over quickly) and `env`; returns once it is ready.
pub async fn start_standalone(config: &Path, database_url: &str, env: &[(&str, &str)]) -> GatewayProcess {
    start_standalone_with(config, database_url, env, &[]).await
}

/// [`start_standalone`] with more flags.
pub async fn start_standalone_with(
    config: &Path,
    database_url: &str,
    env: &[(&str, &str)],
    flags: &[&str],
) -> GatewayProcess {
    let port = super::free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_hookline"))
        .args(["standalone", "--lease-margin", "1s"])
        .args(flags)
        .arg("-f")
        .arg(config)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .env("DATABASE_URL", database_url)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start gateway");
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !client
        .get(format!("{base}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
    {
        assert!(Instant::now() < deadline, "gateway not ready within 30s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    GatewayProcess { child, base }
}
