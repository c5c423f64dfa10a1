//! Postgres high availability as CloudNativePG runs it, built on this machine: a primary with a
//! synchronous streaming replica made by `pg_basebackup`, behind a TCP proxy standing for the
//! cluster's read-write Service. The primary dies (SIGKILL to all its processes) while
//! publishers are busy, the replica is promoted and the proxy sent to it: the gateway answers
//! 503 while it has no database and nothing else, loses no event it acknowledged, and delivers
//! every one of them from the new primary.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use support::process::start_standalone;
use support::sink::Sink;

const TOKEN: &str = "failover-test-token";

/// The newest installed Postgres's programs (hack/test-env installs it).
fn bindir() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("Postgres installed under /usr/lib/postgresql")
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .collect();
    versions.sort();
    versions.pop().expect("a Postgres version").1
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout.starts_with(b"0\n"))
}

/// A Postgres program, run as the postgres user when the tests run as root (Postgres refuses
/// root), as hack/test-env does.
fn postgres_command(program: &str) -> Command {
    let path = bindir().join(program);
    if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(path);
        command
    } else {
        Command::new(path)
    }
}

fn run(mut command: Command, what: &str) {
    let out = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One Postgres server: its data directory, port and process group.
struct Server {
    data: PathBuf,
    port: u16,
    process: Child,
}

impl Server {
    fn start(data: &Path, settings: &[&str]) -> Server {
        let port = support::free_port();
        let mut command = postgres_command("postgres");
        command
            .arg("-D")
            .arg(data)
            .args(["-p", &port.to_string(), "-k"])
            .arg(data.parent().expect("a parent directory"))
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "max_connections=200"])
            .args(["-c", "fsync=off", "-c", "full_page_writes=off"])
            .args(settings.iter().flat_map(|s| ["-c", s]))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // Its own process group: killing the group is the machine under it dying.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let process = command.spawn().expect("start postgres");
        Server {
            data: data.to_owned(),
            port,
            process,
        }
    }

    async fn ready(&self) {
        for _ in 0..300 {
            let mut check = Command::new(bindir().join("pg_isready"));
            check.args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()]);
            if check.status().is_ok_and(|s| s.success()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("postgres on {} not ready", self.port);
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn kill(&mut self) {
        let group = format!("-{}", self.process.id());
        run(
            {
                let mut kill = Command::new("kill");
                kill.args(["-KILL", "--", &group]);
                kill
            },
            "kill the primary",
        );
        let _ = self.process.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.process.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.process.wait();
    }
}

/// What the read-write Service does: new connections go to the current primary.
async fn proxy(primary: Arc<AtomicU16>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let upstream = primary.load(Ordering::SeqCst);
            tokio::spawn(async move {
                if let Ok(mut server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    port
}

#[derive(Default)]
struct Answers {
    acknowledged: BTreeSet<String>,
    unavailable: usize,
    duplicates: usize,
    other: Vec<String>,
}

#[tokio::test]
async fn promoting_a_synchronous_replica_loses_no_acknowledged_event() {
    let dir = std::env::temp_dir().join(format!("hookline-pg-ha-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    if is_root() {
        run(
            {
                let mut chown = Command::new("chown");
                chown.args(["postgres"]).arg(&dir);
                chown
            },
            "chown the cluster directory",
        );
    }
    let mut initdb = postgres_command("initdb");
    initdb.arg("-D").arg(dir.join("primary")).args([
        "-U",
        "postgres",
        "--auth=trust",
        "-E",
        "UTF8",
        "--locale=C.UTF-8",
    ]);
    run(initdb, "initdb");
    // Every commit waits for the replica to have it: what CloudNativePG's synchronous replicas
    // (minSyncReplicas: 1) promise, and what "no acknowledged loss" needs.
    let mut primary = Server::start(
        &dir.join("primary"),
        &[
            "wal_level=replica",
            "max_wal_senders=4",
            "synchronous_standby_names=*",
        ],
    );
    primary.ready().await;
    let mut basebackup = postgres_command("pg_basebackup");
    basebackup
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &primary.port.to_string(),
            "-U",
            "postgres",
            "-D",
        ])
        .arg(dir.join("replica"))
        .args(["-R", "-X", "stream", "-c", "fast"]);
    run(basebackup, "pg_basebackup");
    let replica = Server::start(&dir.join("replica"), &["hot_standby=on"]);
    replica.ready().await;
    let admin = sqlx::PgPool::connect(&primary.url())
        .await
        .expect("connect to the primary");
    for _ in 0..100 {
        let sync: Option<String> = sqlx::query_scalar("SELECT sync_state FROM pg_stat_replication")
            .fetch_optional(&admin)
            .await
            .unwrap();
        if sync.as_deref() == Some("sync") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    admin.close().await;

    let serving = Arc::new(AtomicU16::new(primary.port));
    let service = proxy(serving.clone()).await;
    let database_url = format!("postgres://postgres@127.0.0.1:{service}/postgres");
    let sink = Sink::start().await;
    let config = support::subscription_config(&sink.url("crm"), "");
    let gateway = start_standalone(&config, &database_url, &[("HOOKLINE_PUBLISH_TOKEN", TOKEN)]).await;

    // Four publishers, each publishing its own numbered events as fast as they are answered.
    let answers = Arc::new(Mutex::new(Answers::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let publishers: Vec<_> = (0..4)
        .map(|publisher| {
            let (answers, stop, client) = (answers.clone(), stop.clone(), client.clone());
            let url = format!("{}/v1/namespaces/shop/events", gateway.base);
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    let id = format!("p{publisher}-{n}");
                    let sent = client
                        .post(&url)
                        .bearer_auth(TOKEN)
                        .json(&json!({"id": id, "type": "order.created", "data": {"n": n}}))
                        .send()
                        .await;
                    {
                        let mut answers = answers.lock().unwrap();
                        match sent.map(|r| r.status().as_u16()) {
                            // 200: stored already. A commit that reached both servers
                            // while its answer was lost in the kill: answered 503, stored,
                            // and the publisher's retry is told it is a duplicate.
                            Ok(status @ (200 | 202)) => {
                                answers.duplicates += usize::from(status == 200);
                                answers.acknowledged.insert(id);
                                n += 1;
                            }
                            // Not stored: the same event is published again, as a publisher
                            // should.
                            Ok(503) => answers.unavailable += 1,
                            other => answers.other.push(format!("{id}: {other:?}")),
                        }
                    }
                    if n % 16 == 0 {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            })
        })
        .collect();
    let acknowledged = || answers.lock().unwrap().acknowledged.len();

    support::wait_until(
        "events acknowledged before the failure",
        Duration::from_secs(60),
        || acknowledged() >= 300,
    )
    .await;
    primary.kill();
    let killed = std::time::Instant::now();
    let before_promotion = acknowledged();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut promote = postgres_command("pg_ctl");
    promote.arg("promote").arg("-D").arg(&replica.data).arg("-w");
    run(promote, "pg_ctl promote");
    serving.store(replica.port, Ordering::SeqCst);
    let promoted = acknowledged();
    support::wait_until(
        "the first event acknowledged by the new primary",
        Duration::from_secs(60),
        || acknowledged() > promoted,
    )
    .await;
    let outage = killed.elapsed();
    support::wait_until(
        "events acknowledged by the new primary",
        Duration::from_secs(60),
        || acknowledged() >= promoted + 300,
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    for publisher in publishers {
        publisher.await.unwrap();
    }
    let answers = std::mem::take(&mut *answers.lock().unwrap());
    eprintln!(
        "{} acknowledged ({} before the kill, {} while the replica was promoted), {} answered 503, \
         {} stored before a 503 (a retry answered as a duplicate); {:.1} s from the kill to the \
         first event stored on the new primary (1 s of it before the promotion)",
        answers.acknowledged.len(),
        before_promotion,
        promoted - before_promotion,
        answers.unavailable,
        answers.duplicates,
        outage.as_secs_f64()
    );
    assert!(
        answers.other.is_empty(),
        "only 202, 200 and 503: {:?}",
        answers.other
    );

    // Everything acknowledged is in the new primary, and is delivered from it.
    let new_primary = sqlx::PgPool::connect(&replica.url()).await.unwrap();
    let stored: BTreeSet<String> = sqlx::query_scalar("SELECT external_id FROM events")
        .fetch_all(&new_primary)
        .await
        .unwrap()
        .into_iter()
        .collect();
    let lost: Vec<_> = answers.acknowledged.difference(&stored).collect();
    assert!(lost.is_empty(), "acknowledged, not on the new primary: {lost:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let delivered: BTreeSet<String> = sink
            .received("crm")
            .iter()
            .map(|r| r.header("webhook-id").to_owned())
            .collect();
        // Queued, or out on a lease of its row or a claim: sent by the old primary's gateway
        // with no outcome recorded there, it is queued again once its lease ends.
        let (queued,): (i64,) =
            sqlx::query_as("SELECT count(*) FROM delivery_states WHERE status IN ('pending', 'failed')")
                .fetch_one(&new_primary)
                .await
                .unwrap();
        if queued == 0 && delivered.len() == stored.len() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{queued} deliveries still queued, {} of {} events received",
            delivered.len(),
            stored.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (undelivered,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM events e WHERE NOT EXISTS (
             SELECT 1 FROM delivery_states d WHERE d.event_id = e.id AND d.status = 'succeeded')",
    )
    .fetch_one(&new_primary)
    .await
    .unwrap();
    assert_eq!(undelivered, 0, "every stored event delivered");
    new_primary.close().await;
    drop(gateway);
    let _ = std::fs::remove_dir_all(&config);
    let _ = std::fs::remove_dir_all(&dir);
}
