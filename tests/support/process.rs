//! `hookline standalone` as a real process, the way it runs in production, on a test database.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What a process logs to stderr, line by line, as the person who started it reads it: JSON
/// lines (stderr is not a terminal) are shown as their message.
#[derive(Clone, Default)]
pub struct Log(
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// The lines as written, every field included.
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
);

impl Log {
    /// Reads `stderr` until it closes, echoing each line to the test's output.
    pub fn capture(stderr: impl std::io::Read + Send + 'static, name: &'static str) -> Self {
        let log = Self::default();
        let (messages, raw) = (log.0.clone(), log.1.clone());
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("{name}: {line}");
                let message = serde_json::from_str::<serde_json::Value>(&line)
                    .ok()
                    .and_then(|v| v["message"].as_str().map(str::to_owned))
                    .unwrap_or_else(|| line.clone());
                messages.lock().unwrap_or_else(|e| e.into_inner()).push(message);
                raw.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        });
        log
    }

    /// Whether any line, with all its fields, holds `needle`.
    pub fn anywhere(&self, needle: &str) -> bool {
        self.1
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|l| l.contains(needle))
    }

    /// The first line containing `needle`.
    pub fn find(&self, needle: &str) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|l| l.contains(needle))
            .cloned()
    }

    /// How many lines contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Waits until `count` lines contain `needle`; returns the last of them.
    pub async fn wait_for(&self, needle: &str, count: usize, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            if self.count(needle) >= count {
                let lines = self.0.lock().unwrap_or_else(|e| e.into_inner());
                return lines
                    .iter()
                    .rev()
                    .find(|l| l.contains(needle))
                    .cloned()
                    .unwrap_or_default();
            }
            assert!(
                Instant::now() < deadline,
                "{needle:?} not logged {count} times within {within:?}: {:?}",
                self.0.lock().unwrap_or_else(|e| e.into_inner())
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A running gateway process; killed when dropped.
pub struct GatewayProcess {
    pub child: Child,
    pub base: String,
    pub log: Log,
    /// Its state directory (the generated admin token is there).
    pub state: std::path::PathBuf,
}

impl GatewayProcess {
    /// The admin token the process generated (no token was configured).
    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.state.join("admin-token"))
            .expect("the generated admin token")
            .trim()
            .to_owned()
    }

    /// Publishes `event` into the `default` namespace with `token`; the answer (`id`, …).
    pub async fn publish(&self, token: &str, event: serde_json::Value) -> serde_json::Value {
        let response = reqwest::Client::new()
            .post(format!("{}/v1/namespaces/default/events", self.base))
            .bearer_auth(token)
            .json(&event)
            .send()
            .await
            .expect("publish request");
        assert!(response.status().is_success(), "publish: {}", response.status());
        response.json().await.expect("publish answer")
    }

    /// `GET path` with the admin token; the body as text.
    pub async fn admin_get(&self, path: &str) -> String {
        reqwest::Client::new()
            .get(format!("{}{path}", self.base))
            .bearer_auth(self.admin_token())
            .send()
            .await
            .expect("admin request")
            .text()
            .await
            .expect("admin answer")
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.state);
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
    // Its own state directory: no test writes another's (or the machine's) generated token.
    let state = std::env::temp_dir().join(format!("hookline-state-{}", uuid::Uuid::new_v4().simple()));
    let mut child = Command::new(env!("CARGO_BIN_EXE_hookline"))
        .args(["standalone", "--lease-margin", "1s"])
        .args(flags)
        .arg("-f")
        .arg(config)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--state-dir")
        .arg(&state)
        .env("DATABASE_URL", database_url)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start gateway");
    let log = Log::capture(child.stderr.take().expect("piped"), "standalone");
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
    GatewayProcess {
        child,
        base,
        log,
        state,
    }
}
