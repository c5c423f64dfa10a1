//! The embedded default database: with no `DATABASE_URL`, `hookline standalone` runs a private
//! Postgres from the machine's PostgreSQL binaries, listening on a Unix socket only, with its
//! data kept in the state directory across restarts (acknowledged events must survive them).

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

#[derive(Debug, thiserror::Error)]
pub enum PostgresError {
    #[error(
        "no PostgreSQL server binaries found (looked in /usr/lib/postgresql/*/bin and PATH); install PostgreSQL or set DATABASE_URL"
    )]
    NotInstalled,
    #[error("cannot prepare {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{command} failed: {output}")]
    Command { command: String, output: String },
}

/// A running private Postgres; stop it with [`PrivatePostgres::stop`].
pub struct PrivatePostgres {
    bindir: PathBuf,
    data_dir: PathBuf,
    socket_dir: PathBuf,
    /// Postgres refuses to run as root; as root it runs as this (uid, gid).
    run_as: Option<(u32, u32)>,
}

const USER: &str = "hookline";

fn find_bindir() -> Option<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|bin| bin.join("initdb").is_file())
        .collect();
    versions.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
    });
    versions.pop().or_else(|| {
        std::env::var_os("PATH")
            .into_iter()
            .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
            .find(|dir| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file())
    })
}

/// uid and gid of a user from /etc/passwd.
fn lookup_user(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.first() == Some(&name) && fields.len() > 3)
            .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
            .flatten()
    })
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

impl PrivatePostgres {
    /// Initializes (first time only) and starts the database under `state_dir/postgres`.
    pub fn start(state_dir: &Path) -> Result<Self, PostgresError> {
        let bindir = find_bindir().ok_or(PostgresError::NotInstalled)?;
        let base = state_dir.join("postgres");
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| PostgresError::Io { path, source }
        };
        std::fs::create_dir_all(&base).map_err(io(&base))?;
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o700)).map_err(io(&base))?;
        let run_as = if is_root() {
            lookup_user("postgres").or_else(|| lookup_user("nobody"))
        } else {
            None
        };
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(&base, Some(uid), Some(gid)).map_err(io(&base))?;
        }
        let postgres = Self {
            bindir,
            data_dir: base.join("data"),
            socket_dir: base.clone(),
            run_as,
        };
        if !postgres.data_dir.join("PG_VERSION").exists() {
            tracing::info!(data_dir = %postgres.data_dir.display(), "initializing the private database");
            postgres.run(
                "initdb",
                &[
                    "-D",
                    &postgres.data_dir.to_string_lossy(),
                    "-U",
                    USER,
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--locale=C.UTF-8",
                ],
            )?;
        }
        let options = format!("-c listen_addresses='' -k {}", postgres.socket_dir.display());
        let log = postgres.socket_dir.join("postgres.log");
        if postgres
            .run("pg_ctl", &["-D", &postgres.data_dir.to_string_lossy(), "status"])
            .is_err()
        {
            postgres.run(
                "pg_ctl",
                &[
                    "-D",
                    &postgres.data_dir.to_string_lossy(),
                    "-l",
                    &log.to_string_lossy(),
                    "-o",
                    &options,
                    "-w",
                    "start",
                ],
            )?;
        }
        tracing::info!(socket_dir = %postgres.socket_dir.display(), "private database running");
        Ok(postgres)
    }

    /// Connection URL over the Unix socket.
    pub fn url(&self) -> String {
        format!(
            "postgres://{USER}@localhost/postgres?host={}",
            self.socket_dir.display()
        )
    }

    /// Stops the database (fast shutdown: connections are closed, data is safe).
    pub fn stop(&self) {
        if let Err(err) = self.run(
            "pg_ctl",
            &["-D", &self.data_dir.to_string_lossy(), "-m", "fast", "-w", "stop"],
        ) {
            tracing::warn!("stopping the private database: {err}");
        }
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<Output, PostgresError> {
        let mut command = Command::new(self.bindir.join(program));
        command.args(args).current_dir(&self.socket_dir);
        if let Some((uid, gid)) = self.run_as {
            command.uid(uid).gid(gid);
        }
        let output = command.output().map_err(|source| PostgresError::Io {
            path: self.bindir.join(program),
            source,
        })?;
        if output.status.success() {
            Ok(output)
        } else {
            Err(PostgresError::Command {
                command: program.to_owned(),
                output: String::from_utf8_lossy(
                    &[output.stdout.as_slice(), output.stderr.as_slice()].concat(),
                )
                .trim()
                .to_owned(),
            })
        }
    }
}
