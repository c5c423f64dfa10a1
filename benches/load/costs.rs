//! What a part of the benchmark cost per unit of work (a delivery, or an ingested webhook):
//! gateway and Postgres CPU time from /proc, row writes and commits from Postgres' statistics,
//! WAL bytes from the WAL position, the gateway's round trips (statements it ran, from
//! pg_stat_statements). Rates swing with the machine; these do much less.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use crate::rig::Bench;
use crate::{progress, report};

/// The role the gateway connects as: its statements are its own in pg_stat_statements.
pub(crate) const GATEWAY_ROLE: &str = "hookline_gateway";

/// CPU time used so far, in µs: by the gateway, Postgres, this process (the load generator and
/// the sink) and the whole machine, and the machine's capacity (wall time × cores).
#[derive(Clone, Copy)]
pub(crate) struct CpuTimes {
    gateway_us: f64,
    postgres_us: f64,
    load_us: f64,
    machine_busy_us: f64,
    machine_us: f64,
}

/// The machine's busy and total CPU time from /proc/stat, in µs (all cores).
fn machine_cpu_us() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    // cpu user nice system idle iowait irq softirq steal (guest time is inside user).
    let ticks: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|t| t.parse().ok())
        .collect();
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let total: f64 = ticks.iter().sum();
    let idle = ticks.get(3).copied().unwrap_or(0.0) + ticks.get(4).copied().unwrap_or(0.0);
    ((total - idle) * 1e6 / per_second, total * 1e6 / per_second)
}

/// The counters at one moment.
pub(crate) struct Snapshot {
    /// CPU times when the snapshot began (the end of what came before it)...
    ended: CpuTimes,
    /// ...and when it was done (the start of what follows it).
    began: CpuTimes,
    wal_bytes: f64,
    /// The WAL insert position, as Postgres writes it (for pg_waldump).
    wal_lsn: String,
    commits: i64,
    round_trips: i64,
    /// Time the gateway's statements spent being planned and executed, in µs.
    plan_us: f64,
    exec_us: f64,
    /// Per table: rows inserted, updated, updated HOT, deleted; autovacuums and autoanalyzes.
    tables: BTreeMap<String, [i64; 6]>,
}

/// Where the private Postgres says its postmaster runs.
pub(crate) fn postmaster_pid_file(bench_dir: &Path) -> PathBuf {
    bench_dir.join("postgres").join("data").join("postmaster.pid")
}

/// user + system CPU time of a process (and, with `children`, of its reaped children), in µs.
fn cpu_us(pid: u32, children: bool) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces), from field 3 (state) on.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    let mut total = ticks(11) + ticks(12); // utime, stime
    if children {
        total += ticks(13) + ticks(14); // cutime, cstime
    }
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some(total as f64 * 1e6 / per_second)
}

/// The postmaster's CPU time with its reaped backends', and that of the backends still running.
fn postgres_cpu_us(pid_file: &Path) -> f64 {
    let Some(postmaster) = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|text| text.lines().next()?.trim().parse::<u32>().ok())
    else {
        return 0.0;
    };
    let mut total = cpu_us(postmaster, true).unwrap_or(0.0);
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let parent = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')?
                    .1
                    .split_whitespace()
                    .nth(1)?
                    .parse::<u32>()
                    .ok()
            });
        if parent == Some(postmaster) {
            total += cpu_us(pid, false).unwrap_or(0.0);
        }
    }
    total
}

impl Bench {
    /// The counters now. Postgres' statistics reach the views within 10 s of a backend going
    /// idle, so after a part they are read once that has passed; CPU and WAL at once.
    pub(crate) async fn snapshot(&self) -> anyhow::Result<Snapshot> {
        let ended = self.cpu_times();
        let (wal_bytes, wal_lsn): (f64, String) = sqlx::query_as(
            "SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::float8, pg_current_wal_insert_lsn()::text",
        )
        .fetch_one(&self.pool)
        .await?;
        tokio::time::sleep(Duration::from_secs(11)).await;
        let commits: i64 =
            sqlx::query_scalar("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
                .fetch_one(&self.pool)
                .await?;
        // Every statement the gateway sent (BEGIN and COMMIT included), each a round trip.
        let (round_trips, plan_us, exec_us): (i64, f64, f64) = sqlx::query_as(
            "SELECT coalesce(sum(calls), 0)::bigint, coalesce(sum(total_plan_time), 0) * 1000,
                    coalesce(sum(total_exec_time), 0) * 1000
             FROM pg_stat_statements WHERE userid = $1::regrole",
        )
        .bind(GATEWAY_ROLE)
        .fetch_one(&self.pool)
        .await?;
        let rows: Vec<(String, i64, i64, i64, i64, i64, i64)> = sqlx::query_as(
            "SELECT relname::text, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del, autovacuum_count,
                    autoanalyze_count
             FROM pg_stat_user_tables",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(Snapshot {
            ended,
            began: self.cpu_times(),
            wal_bytes,
            wal_lsn,
            commits,
            round_trips,
            plan_us,
            exec_us,
            tables: rows
                .into_iter()
                .map(|(table, ins, upd, hot, del, vacuums, analyzes)| {
                    (table, [ins, upd, hot, del, vacuums, analyzes])
                })
                .collect(),
        })
    }

    /// Prints what the work since `before` cost per unit (`per`: delivery or webhook) as
    /// `<part>_<cost>_per_<per>` lines, and the row writes per table as progress.
    pub(crate) async fn report_costs(
        &self,
        part: &str,
        before: &Snapshot,
        units: u64,
        per: &str,
    ) -> anyhow::Result<()> {
        let after = self.snapshot().await?;
        let units = units.max(1) as f64;
        let (mut row_writes, mut autovacuums) = (0, 0);
        for (table, now) in &after.tables {
            let was = before.tables.get(table).copied().unwrap_or_default();
            let delta = |i: usize| now[i] - was[i];
            row_writes += delta(0) + delta(1) + delta(3);
            autovacuums += delta(4) + delta(5);
            if (0..6).any(|i| delta(i) != 0) {
                progress(&format!(
                    "{part}: {table} per {per}: {:.2} inserted, {:.2} updated ({:.2} HOT), {:.2} deleted; \
                     {} autovacuums, {} autoanalyzes",
                    delta(0) as f64 / units,
                    delta(1) as f64 / units,
                    delta(2) as f64 / units,
                    delta(3) as f64 / units,
                    delta(4),
                    delta(5),
                ));
            }
        }
        // Counted so that a slow run can be checked against it (the slow fan-out and resumed
        // runs of 2026-12-06 had none, docs/benchmarks.md).
        report(&format!("{part}_autovacuums"), autovacuums as f64, "runs");
        let cost = |name: &str, value: f64, unit: &str| {
            report(
                &format!("{part}_{name}_per_{per}"),
                value / units,
                &format!("{unit}/{per}"),
            );
        };
        cost("row_writes", row_writes as f64, "rows");
        let (cpu_before, cpu_after) = (before.began, after.ended);
        cost(
            "gateway_cpu_us",
            cpu_after.gateway_us - cpu_before.gateway_us,
            "us",
        );
        cost("pg_cpu_us", cpu_after.postgres_us - cpu_before.postgres_us, "us");
        cost("load_cpu_us", cpu_after.load_us - cpu_before.load_us, "us");
        report_cpu_shares(part, &cpu_before, &cpu_after);
        // Of Postgres' time, what went to planning the gateway's statements and what to running
        // them (wall time in the backends, so waits for locks and I/O count too).
        cost("pg_plan_us", after.plan_us - before.plan_us, "us");
        cost("pg_exec_us", after.exec_us - before.exec_us, "us");
        cost("wal_bytes", after.wal_bytes - before.wal_bytes, "bytes");
        // What the WAL consists of: rows (the heap: events with their bodies, deliveries,
        // attempts, queue rows), index entries, and full-page images after checkpoints.
        match self.wal_composition(&before.wal_lsn, &after.wal_lsn) {
            Ok(parts) => {
                for (name, bytes) in parts {
                    cost(&format!("wal_{name}_bytes"), bytes, "bytes");
                }
            }
            Err(err) => progress(&format!("{part}: no WAL composition: {err}")),
        }
        let statements: Vec<(String, i64, i64, f64, f64)> = sqlx::query_as(
            "SELECT left(regexp_replace(query, '\\s+', ' ', 'g'), 100), calls, plans,
                    total_plan_time * 1000 / greatest(plans, 1), total_exec_time * 1000 / greatest(calls, 1)
             FROM pg_stat_statements WHERE userid = $1::regrole
             ORDER BY total_plan_time + total_exec_time DESC LIMIT 4",
        )
        .bind(GATEWAY_ROLE)
        .fetch_all(&self.pool)
        .await?;
        for (query, calls, plans, plan, exec) in statements {
            progress(&format!(
                "{part}: so far {calls} calls, {plans} plans of {plan:.0} µs, run in {exec:.0} µs: {query}"
            ));
        }
        cost("commits", (after.commits - before.commits) as f64, "commits");
        cost(
            "round_trips",
            (after.round_trips - before.round_trips) as f64,
            "statements",
        );
        Ok(())
    }
}

impl Bench {
    pub(crate) fn cpu_times(&self) -> CpuTimes {
        let (machine_busy_us, machine_us) = machine_cpu_us();
        CpuTimes {
            gateway_us: cpu_us(self.gateway.child.id(), true).unwrap_or(0.0),
            postgres_us: postgres_cpu_us(&self.postmaster_pid_file),
            load_us: cpu_us(std::process::id(), false).unwrap_or(0.0),
            machine_busy_us,
            machine_us,
        }
    }
}

/// How busy the machine's cores were between two moments, as `<part>_machine_cpu_busy_ratio`,
/// and who kept them busy, as progress: the figure that says whether a part ran out of CPU.
pub(crate) fn report_cpu_shares(part: &str, before: &CpuTimes, after: &CpuTimes) {
    let capacity = (after.machine_us - before.machine_us).max(1.0);
    let share = |f: fn(&CpuTimes) -> f64| 100.0 * (f(after) - f(before)) / capacity;
    let busy = share(|c| c.machine_busy_us);
    let (gateway, postgres, load) = (
        share(|c| c.gateway_us),
        share(|c| c.postgres_us),
        share(|c| c.load_us),
    );
    report(&format!("{part}_machine_cpu_busy_ratio"), busy / 100.0, "ratio");
    progress(&format!(
        "{part}: the machine's CPU was {busy:.0} % busy: gateway {gateway:.0} %, Postgres {postgres:.0} %, \
         load generator and sink {load:.0} %, the rest {:.0} %",
        busy - gateway - postgres - load
    ));
}

impl Bench {
    /// Bytes of WAL between two positions by what they hold (`pg_waldump --stats`): `heap`
    /// (Heap and Heap2 records without their page images), `btree` (index records, likewise),
    /// `fpi` (full-page images of any kind) and `other`.
    fn wal_composition(&self, from: &str, to: &str) -> anyhow::Result<Vec<(&'static str, f64)>> {
        let wal_dir = self
            .postmaster_pid_file
            .parent()
            .context("the data directory")?
            .join("pg_wal");
        let waldump = std::fs::read_dir("/usr/lib/postgresql")?
            .flatten()
            .map(|version| version.path().join("bin").join("pg_waldump"))
            .filter(|path| path.exists())
            .max()
            .context("pg_waldump not installed")?;
        let output = std::process::Command::new(waldump)
            .args(["--stats", "-p"])
            .arg(&wal_dir)
            .args(["-s", from, "-e", to])
            .output()?;
        anyhow::ensure!(
            output.status.success(),
            "pg_waldump: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let (mut heap, mut btree, mut fpi, mut other) = (0.0, 0.0, 0.0, 0.0);
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            // Type, N (%), record size (%), FPI size (%), combined size (%): the four integers.
            let mut fields = line.split_whitespace();
            let Some(kind) = fields.next() else {
                continue;
            };
            let numbers: Vec<f64> = fields
                .filter_map(|f| f.parse::<u64>().ok())
                .map(|n| n as f64)
                .collect();
            let [_, record, page_images, _] = numbers[..] else {
                continue;
            };
            if kind == "Total" {
                continue;
            }
            fpi += page_images;
            match kind {
                "Heap" | "Heap2" => heap += record,
                "Btree" => btree += record,
                _ => other += record,
            }
        }
        Ok(vec![
            ("heap", heap),
            ("btree", btree),
            ("fpi", fpi),
            ("other", other),
        ])
    }
}
