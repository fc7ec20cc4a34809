//! The CLI as kubectl users expect it, against a live `ebb serve` (on PostgreSQL when
//! `EBB_TEST_DATABASE_URL` is set): shell completion; contexts in a config file that give the
//! server, token and organization, overridden by flags and `EBB_*`; `ebb runner` on them;
//! tables that fit a narrow terminal, `-o wide|yaml|name`, `--no-headers`; tokens, workspace
//! changes, `ebb status`; and a bulk redelivery that asks first.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::cli::{Ebb, Run, row, string};
use crate::support::{ebb_serve, output};
use ebb_tests::cluster::Cluster;
use ebb_tests::{ADMIN_TOKEN, Process, TestDatabases, bin_path};

/// Where the context test's commands go: `ebb serve`, or on PostgreSQL lifecycle-svc and a
/// scheduler replica (`ebb serve` keeps its databases in SQLite files; the commands of that
/// test use no other services).
enum Site {
    Serve(Box<(Process, TestDatabases)>),
    Cluster(Box<Cluster>),
}

impl Site {
    async fn start() -> (Self, Ebb) {
        let mut dbs = TestDatabases::new();
        if !dbs.is_postgres() {
            let (server, data) = serve(&mut dbs, &[]).await;
            let ebb = Ebb::new(&server, &data, &dbs);
            return (Self::Serve(Box::new((server, dbs))), ebb);
        }
        let cluster = Cluster::start_on(dbs, 1, &[]).await;
        // The CLI's fallback token file, as `ebb serve` keeps it.
        let data = cluster.dbs.dir().join("data");
        std::fs::create_dir_all(&data).expect("data dir");
        std::fs::write(data.join("admin-token"), ADMIN_TOKEN).expect("admin-token");
        let ebb = Ebb::new(&cluster.lifecycle, &data, &cluster.dbs);
        (Self::Cluster(Box::new(cluster)), ebb)
    }

    fn dbs(&self) -> &TestDatabases {
        match self {
            Self::Serve(s) => &s.1,
            Self::Cluster(c) => &c.dbs,
        }
    }

    async fn stop(self) {
        match self {
            Self::Serve(s) => {
                let (server, _dbs) = *s;
                server.kill().await;
            }
            Self::Cluster(c) => drop(c),
        }
    }
}

/// `ebb serve` with its admin token in the data directory, on the test's databases, with
/// `env` besides.
pub async fn serve(
    dbs: &mut TestDatabases,
    env: &[(&str, String)],
) -> (Process, std::path::PathBuf) {
    let mut all: Vec<(&str, String)> = vec![("EBB_ADMIN_TOKEN", String::new())];
    if dbs.is_postgres() {
        for (key, name) in [
            ("EBB_LIFECYCLE__DATABASE_URL", "lifecycle"),
            ("EBB_SCHEDULER__DATABASE_URL", "scheduler"),
            ("EBB_NOTIFIER__DATABASE_URL", "notifier"),
            ("EBB_AUDIT__DATABASE_URL", "audit"),
        ] {
            all.push((key, dbs.create(name).await));
        }
    }
    all.extend(env.iter().cloned());
    ebb_serve(dbs, &all).await
}

pub fn admin_token(data: &Path) -> String {
    std::fs::read_to_string(data.join("admin-token"))
        .expect("admin-token")
        .trim()
        .to_owned()
}

pub fn assert_code(r: &Run, code: i32, what: &str) {
    assert_eq!(
        r.code,
        Some(code),
        "{what}\n--- stdout\n{}\n--- stderr\n{}",
        r.stdout,
        r.stderr
    );
}

#[tokio::test]
async fn completion_scripts_are_printed_and_bash_loads_its_own() {
    let ebb = bin_path("ebb");
    for (shell, marker) in [
        ("bash", "_ebb()"),
        ("zsh", "#compdef ebb"),
        ("fish", "complete -c ebb"),
    ] {
        let out = output(
            shell,
            tokio::process::Command::new(&ebb).args(["completion", shell]),
            Duration::from_secs(30),
        )
        .await;
        assert!(out.status.success(), "ebb completion {shell}");
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(script.contains(marker), "{shell}: {script}");
        for word in ["workspaces", "use-context", "no-headers"] {
            assert!(script.contains(word), "{shell} completes {word}");
        }
    }
    // Sourced by bash, it registers a completion function for `ebb`.
    let out = output(
        "bash",
        tokio::process::Command::new("bash").arg("-c").arg(format!(
            "source <('{}' completion bash) && complete -p ebb",
            ebb.display()
        )),
        Duration::from_secs(30),
    )
    .await;
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("-F _ebb") && said.trim_end().ends_with(" ebb"),
        "{said}"
    );
}

#[tokio::test]
async fn contexts_give_the_server_token_and_organization_and_flags_override_them() {
    let (site, ebb) = Site::start().await;
    let url = ebb.server.clone();
    let data = ebb.data_dir.clone();
    let token = admin_token(&data);
    let org = string(&ebb.json(&["orgs", "create", "ctx-org"]).await, "id");

    // Nothing configured: no token to present, a usage error naming the ways to give one.
    let r = ebb.bare(&["workspaces", "list", "--org", &org], &[]).await;
    assert_code(&r, 2, "no token");
    assert!(
        r.stderr.contains("no token") && r.stderr.contains("set-context"),
        "{}",
        r.stderr
    );

    // A context: server, token file and organization. The first one becomes current.
    let token_file = data.join("admin-token");
    let token_file = token_file.to_str().expect("utf-8 path");
    ebb.bare(
        &[
            "config",
            "set-context",
            "local",
            "--server",
            &url,
            "--token-file",
            token_file,
            "--org",
            &org,
        ],
        &[],
    )
    .await
    .ok("config set-context");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&ebb.config)
            .expect("the config file is written")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the config file is owner-only");
    }
    let current = ebb.bare(&["config", "current-context"], &[]).await;
    assert_eq!(current.ok("current-context").trim(), "local");
    // ebb health probes the context's server too.
    let health = ebb.bare(&["health"], &[]).await.ok("health");
    assert_eq!(health.trim(), "SERVING");

    // No --server, --token or --org: all from the context.
    let project = ebb
        .bare(&["projects", "create", "previews", "-o", "json"], &[])
        .await
        .json("projects create");
    assert_eq!(project["organizationId"], org.as_str(), "{project:#}");
    let project = string(&project, "id");
    let ws = ebb
        .bare(
            &[
                "workspaces",
                "create",
                "--project",
                &project,
                "pr-7",
                "-o",
                "json",
            ],
            &[],
        )
        .await
        .json("workspaces create");
    let ws = string(&ws, "id");
    let listed = ebb.bare(&["workspaces", "list"], &[]).await.ok("list");
    assert!(row(&listed, &ws).contains("pr-7"), "{listed}");

    // A second context with an inline token the server refuses; its secret is never printed.
    ebb.bare(
        &[
            "config",
            "set-context",
            "broken",
            "--server",
            &url,
            "--token",
            "not-the-token",
        ],
        &[],
    )
    .await
    .ok("set-context broken");
    let contexts = ebb
        .bare(&["config", "get-contexts"], &[])
        .await
        .ok("get-contexts");
    assert!(row(&contexts, "local").contains('*'), "{contexts}");
    assert!(row(&contexts, "broken").contains("(inline)"), "{contexts}");
    assert!(!contexts.contains("not-the-token"), "{contexts}");
    let json = ebb
        .bare(&["config", "get-contexts", "-o", "json"], &[])
        .await
        .json("get-contexts");
    assert_eq!(json["currentContext"], "local");
    assert_eq!(
        json["contexts"].as_array().map(Vec::len),
        Some(2),
        "{json:#}"
    );
    let names = ebb
        .bare(&["config", "get-contexts", "-o", "name"], &[])
        .await
        .ok("get-contexts -o name");
    assert_eq!(
        names.lines().collect::<Vec<_>>(),
        ["context/broken", "context/local"]
    );

    // --context and EBB_CONTEXT pick another one.
    let list = ["workspaces", "list", "--org", org.as_str()];
    let mut args = list.to_vec();
    args.extend(["--context", "broken"]);
    let r = ebb.bare(&args, &[]).await;
    assert_code(&r, 1, "--context broken");
    assert!(r.stderr.contains("unauthenticated"), "{}", r.stderr);
    let r = ebb.bare(&list, &[("EBB_CONTEXT", "broken")]).await;
    assert_code(&r, 1, "EBB_CONTEXT=broken");

    // use-context switches; a flag or EBB_TOKEN beats the context's token.
    ebb.bare(&["config", "use-context", "broken"], &[])
        .await
        .ok("use-context");
    assert_code(&ebb.bare(&list, &[]).await, 1, "broken is current");
    let mut args = list.to_vec();
    args.extend(["--token", token.as_str()]);
    assert!(ebb.bare(&args, &[]).await.ok("--token").contains(&ws));
    assert!(
        ebb.bare(&list, &[("EBB_TOKEN", &token)])
            .await
            .ok("EBB_TOKEN")
            .contains(&ws)
    );
    let r = ebb.bare(&["config", "use-context", "nope"], &[]).await;
    assert_code(&r, 2, "unknown context");
    assert!(
        r.stderr.contains("nope") && r.stderr.contains("local") && r.stderr.contains("broken"),
        "{}",
        r.stderr
    );
    ebb.bare(&["config", "use-context", "local"], &[])
        .await
        .ok("use-context local");

    // --server and EBB_SERVER beat the context's; an unreachable server is named.
    let r = ebb
        .bare(
            &["workspaces", "list", "--server", "http://127.0.0.1:9"],
            &[],
        )
        .await;
    assert_code(&r, 1, "unreachable --server");
    assert!(
        r.stderr.contains("unavailable") && r.stderr.contains("http://127.0.0.1:9"),
        "{}",
        r.stderr
    );
    let r = ebb
        .bare(&["workspaces", "list"], &[("EBB_SERVER", "127.0.0.1:9")])
        .await;
    assert_code(&r, 1, "unreachable EBB_SERVER");
    assert!(r.stderr.contains("http://127.0.0.1:9"), "{}", r.stderr);

    // The runner on the context: a destroy due in 2s is queued, shown without an exit code,
    // then run.
    let shown = ebb
        .bare(&["workspaces", "schedule", &ws, "--in", "2s"], &[])
        .await
        .ok("schedule");
    assert!(shown.contains("next destroy"), "{shown}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let queued = loop {
        let names = ebb
            .bare(&["runs", "list", "--status", "queued", "-o", "name"], &[])
            .await
            .ok("runs list");
        if let Some(name) = names.lines().next() {
            break name.trim_start_matches("run/").to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "the destroy run was never queued"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let before = ebb
        .bare(&["runs", "show", &queued], &[])
        .await
        .ok("runs show");
    assert!(row(&before, "status").contains("queued"), "{before}");
    let code = row(&before, "exit code");
    assert!(code.contains('-') && !code.contains('0'), "{before}");
    let runner = ebb
        .bare(
            &[
                "runner",
                "--simulate",
                "succeed",
                "--claim-wait",
                "1s",
                "--max-runs",
                "1",
            ],
            &[],
        )
        .await;
    let said = runner.ok("runner");
    assert!(said.contains(&org) && said.contains(&url), "{said}");
    let after = ebb
        .bare(&["runs", "show", &queued], &[])
        .await
        .ok("runs show");
    assert!(row(&after, "status").contains("succeeded"), "{after}");
    assert!(row(&after, "exit code").contains('0'), "{after}");

    // A runner whose token is refused stops, saying so; one without a token does not start.
    let r = ebb
        .bare(
            &[
                "runner",
                "--context",
                "broken",
                "--org",
                &org,
                "--simulate",
                "succeed",
            ],
            &[],
        )
        .await;
    assert_code(&r, 1, "runner with a refused token");
    assert!(r.stderr.contains("refused the token"), "{}", r.stderr);
    let elsewhere = site.dbs().dir().join("none.toml");
    let r = ebb
        .bare(
            &[
                "runner",
                "--server",
                &url,
                "--org",
                &org,
                "--simulate",
                "succeed",
            ],
            &[("EBB_CLI_CONFIG", elsewhere.to_str().expect("utf-8"))],
        )
        .await;
    assert_code(&r, 2, "runner without a token");
    assert!(r.stderr.contains("no token"), "{}", r.stderr);

    // Without EBB_CLI_CONFIG the file is under XDG_CONFIG_HOME.
    let xdg = site.dbs().dir().join("xdg");
    ebb.bare(
        &["config", "set-context", "x", "--server", "127.0.0.1:1"],
        &[
            ("EBB_CLI_CONFIG", ""),
            ("XDG_CONFIG_HOME", xdg.to_str().expect("utf-8")),
        ],
    )
    .await
    .ok("set-context under XDG_CONFIG_HOME");
    assert!(xdg.join("ebb").join("config.toml").is_file());

    ebb.bare(&["config", "delete-context", "broken"], &[])
        .await
        .ok("delete-context");
    let left = ebb
        .bare(&["config", "get-contexts", "-o", "name"], &[])
        .await
        .ok("get-contexts");
    assert_eq!(left.trim(), "context/local");
    site.stop().await;
}
