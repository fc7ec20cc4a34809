//! The end-to-end harness: starts the real service binaries on free ports against SQLite or
//! PostgreSQL, waits for them to report SERVING and hands out typed clients.
//!
//! * Binaries come from the same target directory as the test executable; build them first
//!   (`cargo build --bins`).
//! * `EBB_TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres` runs every service
//!   on PostgreSQL, each on a fresh database per test; unset, each uses a fresh SQLite file.
//! * Tests that only mean something on PostgreSQL (several replicas sharing one database)
//!   are `#[ignore = "needs PostgreSQL: ..."]`: `cargo test -- --include-ignored` with
//!   `EBB_TEST_DATABASE_URL` set runs them, and they fail without it (see
//!   [`require_postgres`]).
//! * `TEST_LOG=1` shows the services' logs; otherwise they go to files named on failure.
//! * Every process is given [`ADMIN_TOKEN`] as its bootstrap admin token, [`SERVICE_TOKEN`]
//!   as its service token and `EBB_TOKEN` for tools; [`Process::channel`] presents the admin
//!   token, [`Process::channel_as`] another one; [`ENCRYPTION_KEY`] seals their stored secrets.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use sea_orm::{ConnectionTrait, Database};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tonic::service::interceptor::InterceptedService;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

pub use ebb_proto as proto;

pub mod cluster;
pub mod runners;

/// The bootstrap admin token of every process the harness starts.
pub const ADMIN_TOKEN: &str = "ebb-test-admin-token-5f1c2a9e";
/// The service token of every process the harness starts.
pub const SERVICE_TOKEN: &str = "ebb-test-service-token-8d03b7c4";

/// The key that seals secrets in the databases of every process the harness starts.
pub const ENCRYPTION_KEY: &str = "ebb-test:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// A channel presenting a bearer token on every call.
pub type Channel = InterceptedService<tonic::transport::Channel, Bearer>;

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl Bearer {
    /// Presents `token`; an empty one presents nothing.
    pub fn new(token: &str) -> Self {
        Self(if token.is_empty() {
            None
        } else {
            Some(format!("Bearer {token}").parse().expect("token header"))
        })
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            r.metadata_mut().insert("authorization", v.clone());
        }
        Ok(r)
    }
}

/// The variables that give a process the test credentials, unless `envs` sets them.
fn credentials(envs: &[(&str, String)]) -> Vec<(&'static str, String)> {
    [
        ("EBB_ADMIN_TOKEN", ADMIN_TOKEN),
        ("EBB_AUTH__SERVICE_TOKEN", SERVICE_TOKEN),
        ("EBB_TOKEN", ADMIN_TOKEN),
        ("EBB_ENCRYPTION__KEY", ENCRYPTION_KEY),
        // lifecycle's snooze-link server on a port of its own, as every other listener.
        ("EBB_SNOOZE__LISTEN", "127.0.0.1:0"),
        ("EBB_LIFECYCLE__SNOOZE__LISTEN", "127.0.0.1:0"),
    ]
    .into_iter()
    .filter(|(k, _)| !envs.iter().any(|(e, _)| e == k))
    .map(|(k, v)| (k, v.to_owned()))
    .collect()
}

/// The PostgreSQL server URL tests use, if any.
pub fn postgres_url() -> Option<String> {
    std::env::var("EBB_TEST_DATABASE_URL")
        .ok()
        .filter(|u| u.starts_with("postgres"))
}

/// For tests that need PostgreSQL: its URL. Such tests are `#[ignore]`d, so a plain
/// `cargo test` leaves them out and `cargo test -- --include-ignored` runs them; run without
/// a URL they fail, naming the variable to set, rather than pass having tested nothing.
pub fn require_postgres(test: &str) -> String {
    postgres_url().unwrap_or_else(|| {
        panic!(
            "{test} needs PostgreSQL: set EBB_TEST_DATABASE_URL \
             (for example postgres://postgres@127.0.0.1:5432/postgres)"
        )
    })
}

/// The command that runs `binary`: the services by their names (`lifecycle-svc`, …) run as
/// `ebb service lifecycle`, as the image runs them; anything else is a binary of the workspace.
pub fn command(binary: &str) -> Command {
    match binary.strip_suffix("-svc") {
        Some(service) => {
            let mut cmd = Command::new(bin_path("ebb"));
            cmd.args(["service", service]);
            cmd
        }
        None => Command::new(bin_path(binary)),
    }
}

/// Where the workspace's binaries are: next to the test executable's `deps` directory.
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // Test executables live in `<profile>/deps`, bench binaries in `<profile>`.
    let parent = exe.parent().expect("executable directory");
    let dir = if parent.ends_with("deps") {
        parent.parent().expect("profile directory")
    } else {
        parent
    };
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first with `cargo build --bins`",
        path.display()
    );
    path
}

/// The databases of one test: fresh SQLite files, or fresh PostgreSQL databases that are
/// dropped when the test ends.
pub struct TestDatabases {
    dir: tempfile::TempDir,
    postgres: Option<String>,
    created: Vec<String>,
    prefix: String,
}

impl TestDatabases {
    /// On PostgreSQL when `EBB_TEST_DATABASE_URL` is set, else on SQLite.
    pub fn new() -> Self {
        Self::on(postgres_url())
    }

    /// On the given PostgreSQL server, or SQLite for `None`.
    pub fn on(postgres: Option<String>) -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
            postgres,
            created: Vec::new(),
            prefix: format!("ebb_t_{}", uuid::Uuid::new_v4().simple()),
        }
    }

    /// Whether these are PostgreSQL databases.
    pub fn is_postgres(&self) -> bool {
        self.postgres.is_some()
    }

    /// A scratch directory that lives as long as the test.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A fresh, empty database for one service.
    pub async fn create(&mut self, name: &str) -> String {
        match &self.postgres {
            None => format!(
                "sqlite://{}?mode=rwc",
                self.dir.path().join(format!("{name}.db")).display()
            ),
            Some(server) => {
                let db_name = format!("{}_{name}", self.prefix);
                let admin = Database::connect(server.as_str())
                    .await
                    .expect("connect to the PostgreSQL server of EBB_TEST_DATABASE_URL");
                admin
                    .execute_unprepared(&format!("CREATE DATABASE {db_name}"))
                    .await
                    .expect("create test database");
                self.created.push(db_name.clone());
                replace_db_name(server, &db_name)
            }
        }
    }
}

impl Default for TestDatabases {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestDatabases {
    fn drop(&mut self) {
        let (Some(server), false) = (self.postgres.clone(), self.created.is_empty()) else {
            return;
        };
        let names = std::mem::take(&mut self.created);
        // Drop runs inside or outside a runtime; a thread of its own works in both.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                if let Ok(admin) = Database::connect(server.as_str()).await {
                    for name in names {
                        let _ = admin
                            .execute_unprepared(&format!(
                                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                            ))
                            .await;
                    }
                }
            });
        })
        .join();
    }
}

/// `server` with its database path replaced by `db`.
pub fn replace_db_name(server: &str, db: &str) -> String {
    let (base, query) = match server.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (server, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let host_end = base[scheme_end..]
        .find('/')
        .map(|i| scheme_end + i)
        .unwrap_or(base.len());
    let mut url = format!("{}/{db}", &base[..host_end]);
    if let Some(q) = query {
        url.push('?');
        url.push_str(q);
    }
    url
}

/// One running service process.
pub struct Process {
    /// Binary name.
    pub name: String,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Where its Prometheus endpoint listens, if it has one.
    pub metrics_addr: Option<SocketAddr>,
    /// Where the web console of `ebb serve` listens, if it serves one.
    pub console_addr: Option<SocketAddr>,
    child: Child,
    log: PathBuf,
}

impl Process {
    /// Starts `binary` with `args` and `envs`, listening on a port the OS picks, and waits until
    /// it prints its address. Does not wait for health; see [`Process::wait_serving`].
    pub async fn spawn(
        binary: &str,
        args: &[&str],
        envs: &[(&str, String)],
        log_dir: &Path,
    ) -> anyhow::Result<Self> {
        Self::start(binary, args, envs, log_dir, true).await
    }

    /// Starts a process that serves nothing (such as `ebb runner`) and waits until it prints
    /// its first line.
    pub async fn spawn_worker(
        binary: &str,
        args: &[&str],
        envs: &[(&str, String)],
        log_dir: &Path,
    ) -> anyhow::Result<Self> {
        Self::start(binary, args, envs, log_dir, false).await
    }

    async fn start(
        binary: &str,
        args: &[&str],
        envs: &[(&str, String)],
        log_dir: &Path,
        server: bool,
    ) -> anyhow::Result<Self> {
        let log = log_dir.join(format!("{binary}-{}.log", uuid::Uuid::new_v4().simple()));
        let mut cmd = command(binary);
        cmd.args(args)
            .env_remove("EBB_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        if server && !args.contains(&"--listen") && !envs.iter().any(|(k, _)| *k == "EBB_LISTEN") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        if server
            && !args.contains(&"--metrics-listen")
            && !envs.iter().any(|(k, _)| *k == "EBB_METRICS__LISTEN")
        {
            cmd.args(["--metrics-listen", "127.0.0.1:0"]);
        }
        // `ebb serve`'s console, on a port of its own too.
        if server
            && args.first() == Some(&"serve")
            && !args.contains(&"--console-listen")
            && !envs.iter().any(|(k, _)| *k == "EBB_CONSOLE__LISTEN")
        {
            cmd.args(["--console-listen", "127.0.0.1:0"]);
        }
        for (k, v) in credentials(envs) {
            cmd.env(k, v);
        }
        for (k, v) in envs {
            cmd.env(k, v);
        }
        if std::env::var_os("TEST_LOG").is_some() {
            cmd.stderr(Stdio::inherit());
        } else {
            cmd.stderr(std::fs::File::create(&log)?);
        }
        let mut child = cmd.spawn().with_context(|| format!("spawn {binary}"))?;
        let stdout = child.stdout.take().context("stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let mut metrics_addr = None;
        let mut console_addr = None;
        let found = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await? {
                if !server {
                    return Ok(Some(SocketAddr::from(([0, 0, 0, 0], 0))));
                }
                if let Some((_, url)) = line.split_once(" metrics on http://") {
                    let addr = url.trim_end_matches("/metrics");
                    metrics_addr = Some(addr.parse::<SocketAddr>()?);
                    continue;
                }
                if let Some(addr) = line.strip_prefix("console on http://") {
                    console_addr = Some(addr.trim().parse::<SocketAddr>()?);
                    continue;
                }
                if let Some((_, addr)) = line.split_once(" listening on ") {
                    let addr = addr.split_whitespace().next().unwrap_or_default();
                    return Ok::<_, anyhow::Error>(Some(addr.parse::<SocketAddr>()?));
                }
            }
            Ok(None)
        })
        .await;
        let addr = match found {
            Ok(Ok(Some(addr))) => addr,
            other => {
                let tail = std::fs::read_to_string(&log).unwrap_or_default();
                bail!("{binary} did not start ({other:?}); its log:\n{tail}");
            }
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self {
            name: binary.to_owned(),
            addr,
            metrics_addr,
            console_addr,
            child,
            log,
        })
    }

    /// One scrape of the process's Prometheus endpoint.
    pub async fn scrape(&self) -> anyhow::Result<Scrape> {
        let addr = self
            .metrics_addr
            .with_context(|| format!("{} has no metrics endpoint", self.name))?;
        let response = reqwest::get(format!("http://{addr}/metrics")).await?;
        if !response.status().is_success() {
            bail!("GET /metrics answered {}", response.status());
        }
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        if !content_type.starts_with("text/plain") {
            bail!("GET /metrics answered content type {content_type:?}");
        }
        Scrape::parse(&response.text().await?)
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Its resident set size in MiB (Linux), while it runs.
    pub fn rss_mib(&self) -> Option<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kib / 1024.0)
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A connected channel presenting the admin token.
    pub async fn channel(&self) -> Channel {
        self.channel_as(ADMIN_TOKEN).await
    }

    /// A connected channel presenting `token` (none when empty).
    pub async fn channel_as(&self, token: &str) -> Channel {
        let channel = tonic::transport::Channel::from_shared(self.url())
            .expect("url")
            .connect()
            .await
            .expect("connect");
        InterceptedService::new(channel, Bearer::new(token))
    }

    /// Waits until the health service reports SERVING for `service` ("" for the server).
    pub async fn wait_serving(&self, service: &str) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(channel) = tonic::transport::Channel::from_shared(self.url())?
                .connect()
                .await
            {
                let mut health = HealthClient::new(channel);
                if let Ok(r) = health
                    .check(HealthCheckRequest {
                        service: service.to_owned(),
                    })
                    .await
                    && r.into_inner().status == ServingStatus::Serving as i32
                {
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "{} never reported SERVING; log: {}",
                    self.name,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The whole log of the process so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last lines of the process's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        if let Some(pid) = self.child.id() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal);
        }
    }

    /// SIGKILL, and reap.
    pub async fn kill(mut self) {
        self.signal(nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait().await;
    }

    /// Waits for the process to exit, at most `timeout`.
    pub async fn wait_exit(
        &mut self,
        timeout: Duration,
    ) -> anyhow::Result<std::process::ExitStatus> {
        Ok(tokio::time::timeout(timeout, self.child.wait()).await??)
    }
}

/// Runs a binary to completion with `args`, returning its exit status and stderr.
pub async fn run_to_exit(
    binary: &str,
    args: &[&str],
    envs: &[(&str, String)],
) -> anyhow::Result<(std::process::ExitStatus, String)> {
    let mut cmd = command(binary);
    cmd.args(args).env_remove("EBB_CONFIG").stdin(Stdio::null());
    for (k, v) in credentials(envs) {
        cmd.env(k, v);
    }
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(30), cmd.output()).await??;
    Ok((
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Starts `binary` on a new database of its own (named after it) with `env`, and waits until
/// it serves.
pub async fn start_service(
    binary: &str,
    dbs: &mut TestDatabases,
    env: &[(&str, String)],
) -> Process {
    let url = dbs.create(binary.trim_end_matches("-svc")).await;
    let mut env = env.to_vec();
    env.push(("EBB_DATABASE_URL", url));
    let p = Process::spawn(binary, &[], &env, dbs.dir())
        .await
        .unwrap_or_else(|e| panic!("start {binary}: {e}"));
    p.wait_serving("").await.expect("serving");
    p
}

/// The series of one Prometheus text-format scrape.
#[derive(Debug, Clone)]
pub struct Scrape {
    /// Name, labels and value of each sample line.
    pub series: Vec<(String, std::collections::BTreeMap<String, String>, f64)>,
}

impl Scrape {
    /// Parses the text format (comments skipped; label values without escapes other than
    /// `\"`); a malformed line is an error naming it.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut series = Vec::new();
        for line in text.lines() {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (head, value) = line
                .rsplit_once(' ')
                .with_context(|| format!("no value in {line:?}"))?;
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v
                    .parse()
                    .with_context(|| format!("bad value in {line:?}"))?,
            };
            let (name, labels) = match head.split_once('{') {
                None => (head.to_owned(), std::collections::BTreeMap::new()),
                Some((name, rest)) => {
                    let body = rest
                        .strip_suffix('}')
                        .with_context(|| format!("unclosed labels in {line:?}"))?;
                    let mut labels = std::collections::BTreeMap::new();
                    let mut rest = body;
                    while !rest.is_empty() {
                        let (key, after) = rest
                            .split_once("=\"")
                            .with_context(|| format!("bad label in {line:?}"))?;
                        let mut end = None;
                        let bytes = after.as_bytes();
                        let mut i = 0;
                        while i < bytes.len() {
                            match bytes[i] {
                                b'\\' => i += 2,
                                b'"' => {
                                    end = Some(i);
                                    break;
                                }
                                _ => i += 1,
                            }
                        }
                        let end = end.with_context(|| format!("unclosed label in {line:?}"))?;
                        labels.insert(
                            key.trim_start_matches(',').to_owned(),
                            after[..end].replace("\\\"", "\""),
                        );
                        rest = after[end + 1..].trim_start_matches(',');
                    }
                    (name.to_owned(), labels)
                }
            };
            series.push((name, labels, value));
        }
        Ok(Self { series })
    }

    /// The value of the first series `name` whose labels include `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.series
            .iter()
            .find(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, v)| *v)
    }

    /// Whether any series is called `name`.
    pub fn has(&self, name: &str) -> bool {
        self.series.iter().any(|(n, _, _)| n == name)
    }
}
