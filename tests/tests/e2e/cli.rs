//! The operator CLI works against a live `ebb serve`: the real `ebb` binary is run as a
//! person would, with the token taken from the data directory, tables for people and JSON
//! for scripts, a deprovisioning followed with `--wait` while a real runner takes the destroy
//! runs, and errors that name what was wrong with the right exit code.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::support::{ebb_serve, output, repo_file};
use ebb_tests::proto::lifecycle::v1 as pb;
use ebb_tests::proto::lifecycle::v1::deprovision_service_client::DeprovisionServiceClient;
use ebb_tests::{Process, TestDatabases, bin_path};

/// Runs the `ebb` binary against one server.
pub struct Ebb {
    pub server: String,
    pub data_dir: PathBuf,
    /// The CLI's config file (contexts), empty unless a test writes contexts to it.
    pub config: PathBuf,
}

/// What one invocation did.
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(self, what: &str) -> String {
        assert_eq!(
            self.code,
            Some(0),
            "`ebb {what}` failed\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout,
            self.stderr
        );
        self.stdout
    }

    pub fn json(self, what: &str) -> serde_json::Value {
        let out = self.ok(what);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("`ebb {what}` printed no JSON ({e}):\n{out}"))
    }
}

impl Ebb {
    /// The CLI for `server`, whose data directory is `data`; its config file is in `dbs`.
    pub fn new(server: &Process, data: &Path, dbs: &TestDatabases) -> Self {
        Self {
            server: server.url(),
            data_dir: data.to_path_buf(),
            config: dbs.dir().join("cli").join("config.toml"),
        }
    }

    /// `ebb ARGS --server URL --data-dir DIR`, with no connection settings from the
    /// environment, so the token comes from the data directory's `admin-token` file.
    pub async fn run(&self, args: &[&str]) -> Run {
        self.run_env(args, &[]).await
    }

    /// `ebb ARGS --server URL --data-dir DIR` with `env` besides.
    pub async fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut all = args.to_vec();
        let data_dir = self.data_dir.to_str().expect("utf-8 path");
        all.extend(["--server", &self.server, "--data-dir", data_dir]);
        self.bare(&all, env).await
    }

    /// `ebb ARGS` with `env` and no other connection settings than the config file's, run
    /// where no `ebb-data` directory is.
    pub async fn bare(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut cmd = tokio::process::Command::new(bin_path("ebb"));
        let dir = self.config.parent().expect("config dir");
        std::fs::create_dir_all(dir).expect("config dir");
        cmd.args(args)
            .current_dir(dir)
            .env("EBB_CLI_CONFIG", &self.config);
        for name in [
            "EBB_TOKEN",
            "EBB_TOKEN_FILE",
            "EBB_SERVER",
            "EBB_CONTEXT",
            "EBB_DATA_DIR",
            "EBB_ORGANIZATION_ID",
            "EBB_TLS_CA_PATH",
            "EBB_LIFECYCLE_URL",
            "COLUMNS",
            "NO_COLOR",
        ] {
            cmd.env_remove(name);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let what = format!("`ebb {}`", args.join(" "));
        let out = output(&what, &mut cmd, Duration::from_secs(120)).await;
        Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    pub async fn ok(&self, args: &[&str]) -> String {
        self.run(args).await.ok(&args.join(" "))
    }

    pub async fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.extend(["--output", "json"]);
        self.run(&all).await.json(&args.join(" "))
    }
}

pub fn string(v: &serde_json::Value, path: &str) -> String {
    let mut cur = v;
    for part in path.split('.') {
        cur = match part.parse::<usize>() {
            Ok(i) => &cur[i],
            Err(_) => &cur[part],
        };
    }
    cur.as_str()
        .unwrap_or_else(|| panic!("no string at `{path}` in {v:#}"))
        .to_owned()
}

fn rfc3339(text: &str) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("`{text}` is not RFC 3339: {e}"))
        .with_timezone(&chrono::Utc)
}

/// The table row (line) that mentions `needle`.
pub fn row<'a>(table: &'a str, needle: &str) -> &'a str {
    table
        .lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no row mentions {needle} in\n{table}"))
}

pub async fn start_server(dbs: &TestDatabases) -> (Process, PathBuf) {
    // No configured admin token: `ebb serve` makes one in the data directory, where the CLI
    // finds it.
    ebb_serve(dbs, &[("EBB_ADMIN_TOKEN", String::new())]).await
}

#[tokio::test]
async fn schedules_upcoming_destroys_and_errors_from_the_command_line() {
    let dbs = TestDatabases::on(None);
    let (server, data) = start_server(&dbs).await;
    let ebb = Ebb::new(&server, &data, &dbs);

    // Organization, project and workspace, created with the CLI; ids read from its JSON.
    let org = ebb.json(&["orgs", "create", "acme"]).await;
    let org = string(&org, "id");
    // Found again later by listing.
    let listed = ebb.ok(&["orgs", "list"]).await;
    assert!(listed.contains(&org) && listed.contains("acme"), "{listed}");
    let named = ebb.json(&["orgs", "list", "--name", "acme"]).await;
    assert_eq!(named["organizations"][0]["id"], serde_json::json!(org));
    let project = ebb
        .json(&["projects", "create", "--org", &org, "previews"])
        .await;
    let project = string(&project, "id");
    // Projects are listed per organization, by name too; another organization sees none.
    ebb.json(&["projects", "create", "--org", &org, "staging"])
        .await;
    let listed = ebb.ok(&["projects", "list", "--org", &org]).await;
    assert!(
        listed.contains("previews") && listed.contains("staging"),
        "{listed}"
    );
    let named = ebb
        .json(&["projects", "list", "--org", &org, "--name", "previews"])
        .await;
    assert_eq!(named["projects"].as_array().map(Vec::len), Some(1));
    assert_eq!(named["projects"][0]["id"], serde_json::json!(project));
    let other = ebb.json(&["orgs", "create", "umbrella"]).await;
    let other = string(&other, "id");
    let none = ebb.json(&["projects", "list", "--org", &other]).await;
    assert!(
        none["projects"].as_array().is_none_or(Vec::is_empty),
        "{none}"
    );
    let outsider = ebb
        .json(&[
            "tokens",
            "create",
            "--org",
            &other,
            "--role",
            "reader",
            "--description",
            "reader of another organization",
        ])
        .await;
    let secret = string(&outsider, "secret");
    let refused = ebb
        .run_env(
            &["projects", "list", "--org", &org],
            &[("EBB_TOKEN", secret.as_str())],
        )
        .await;
    assert_ne!(refused.code, Some(0), "{}", refused.stdout);
    assert!(!refused.stdout.contains("previews"), "{}", refused.stdout);
    let ws = ebb
        .json(&[
            "workspaces",
            "create",
            "--project",
            &project,
            "pr-1234",
            "--label",
            "team=web",
        ])
        .await;
    assert_eq!(ws["labels"]["team"], "web");
    let ws = string(&ws, "id");

    // A destroy in two hours.
    let shown = ebb.ok(&["workspaces", "schedule", &ws, "--in", "2h"]).await;
    let next = row(&shown, "next destroy");
    assert!(
        next.contains("(in 1h 59m)") || next.contains("(in 2h)"),
        "{shown}"
    );

    // Upcoming destroys: the table has the workspace with a relative time, the JSON the
    // fields scripts read.
    let upcoming = ebb
        .ok(&["workspaces", "upcoming", "--org", &org, "--within", "3h"])
        .await;
    let line = row(&upcoming, &ws);
    assert!(line.contains("pr-1234"), "{upcoming}");
    assert!(
        line.contains("in 1h 59m") || line.contains("in 2h"),
        "{upcoming}"
    );
    assert!(line.contains("time") && line.contains("idle"), "{upcoming}");
    assert!(upcoming.contains("due at (UTC)"), "{upcoming}");
    let json = ebb
        .json(&["workspaces", "upcoming", "--org", &org, "--within", "3h"])
        .await;
    let listed = json["workspaces"].as_array().expect("workspaces array");
    assert_eq!(listed.len(), 1, "{json:#}");
    assert_eq!(listed[0]["id"], ws.as_str());
    assert_eq!(listed[0]["name"], "pr-1234");
    assert_eq!(listed[0]["autoDestroyStatus"], "AUTO_DESTROY_STATUS_IDLE");
    let due = rfc3339(&string(&json, "workspaces.0.nextAutoDestroyAt"));
    let left = due - chrono::Utc::now();
    assert!(
        left > chrono::Duration::minutes(110) && left <= chrono::Duration::minutes(120),
        "due {due}"
    );
    assert_eq!(
        string(&json, "workspaces.0.autoDestroyAt"),
        string(&json, "workspaces.0.nextAutoDestroyAt")
    );
    // A narrower window leaves it out.
    let soon = ebb
        .ok(&["workspaces", "upcoming", "--org", &org, "--within", "1h"])
        .await;
    assert!(!soon.contains(&ws), "{soon}");
    assert!(soon.contains("no destroys due within 1h"), "{soon}");

    // The workspace list shows it with its schedule.
    let list = ebb.ok(&["workspaces", "list", "--org", &org]).await;
    let line = row(&list, &ws);
    assert!(
        line.contains("active") && line.contains("pr-1234"),
        "{list}"
    );

    // Extend by a day.
    let extended = ebb.json(&["workspaces", "extend", &ws, "--by", "1d"]).await;
    let later = rfc3339(&string(&extended, "nextAutoDestroyAt"));
    let pushed = later - due;
    assert!(
        pushed >= chrono::Duration::hours(24) && pushed < chrono::Duration::hours(25),
        "extended from {due} to {later}"
    );

    // Clear it: nothing upcoming any more.
    let cleared = ebb.json(&["workspaces", "clear", &ws]).await;
    assert_eq!(cleared["autoDestroyStatus"], "AUTO_DESTROY_STATUS_IDLE");
    assert!(cleared["nextAutoDestroyAt"].is_null(), "{cleared:#}");
    assert!(cleared["autoDestroyAt"].is_null(), "{cleared:#}");
    let after = ebb
        .ok(&["workspaces", "upcoming", "--org", &org, "--within", "30d"])
        .await;
    assert!(!after.contains(&ws), "{after}");

    // Why deferred: nothing holds it back, no deferral recorded.
    let why = ebb.ok(&["workspaces", "why-deferred", &ws]).await;
    assert!(why.contains("nothing holds it back now"), "{why}");
    assert!(why.contains("no deferral recorded"), "{why}");

    // Scheduler tasks: one row per shard.
    let tasks = ebb.ok(&["scheduler", "tasks"]).await;
    for name in [
        "auto_destroy_check",
        "grace_period_sweep",
        "run_lease_rescue",
    ] {
        assert!(tasks.contains(name), "{name} missing from\n{tasks}");
    }
    let tasks = ebb.json(&["scheduler", "tasks"]).await;
    let names: Vec<&str> = tasks["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(names.contains(&"auto_destroy_check"), "{tasks:#}");
    let paused = ebb
        .json(&["scheduler", "pause", "auto_destroy_reminders"])
        .await;
    assert_eq!(paused["paused"], true);
    let resumed = ebb
        .json(&["scheduler", "resume", "auto_destroy_reminders"])
        .await;
    assert_eq!(resumed["paused"], false);

    // No failed deliveries.
    let deliveries = ebb.ok(&["notifier", "deliveries", "--org", &org]).await;
    assert!(deliveries.contains("no deliveries"), "{deliveries}");

    // An unknown workspace: exit 1, one line naming the id.
    let unknown = "0190a1b2-0000-7000-8000-000000000000";
    let r = ebb.run(&["workspaces", "show", unknown]).await;
    assert_eq!(r.code, Some(1), "stdout {} stderr {}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains(unknown) && r.stderr.contains("not found"),
        "{}",
        r.stderr
    );
    assert_eq!(r.stderr.trim().lines().count(), 1, "{}", r.stderr);
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);

    // A refused argument names the field the server refused.
    let r = ebb.run(&["workspaces", "extend", &ws, "--by", "1d"]).await;
    assert_eq!(r.code, Some(1), "no schedule to extend: {}", r.stderr);
    assert!(r.stderr.contains(&ws), "{}", r.stderr);

    // A bad duration: a usage error (2) naming the flag, and nothing sent.
    let r = ebb
        .run(&["workspaces", "schedule", &ws, "--in", "soonish"])
        .await;
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(r.stderr.contains("--in"), "{}", r.stderr);

    // A wrong token: exit 1, the server's refusal.
    let r = ebb
        .run(&["workspaces", "show", &ws, "--token", "not-the-token"])
        .await;
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(r.stderr.contains("unauthenticated"), "{}", r.stderr);

    // No token at all: a usage error naming the ways to give one.
    let r = Ebb::new(&server, &dbs.dir().join("elsewhere"), &dbs)
        .run(&["workspaces", "show", &ws])
        .await;
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(r.stderr.contains("--token"), "{}", r.stderr);

    // The audit chain holds the schedule decisions and verifies on the server.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = ebb
            .run(&["audit", "verify-chain", "--org", &org, "--chunk", "2"])
            .await;
        if r.code == Some(0) && r.stdout.contains("intact") {
            assert!(row(&r.stdout, "verified").contains(|c: char| c.is_ascii_digit()));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the chain never verified: {} {}",
            r.stdout,
            r.stderr
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let history = ebb.ok(&["workspaces", "history", &ws]).await;
    assert!(
        history.contains("workspace.auto_destroy.scheduled"),
        "{history}"
    );
    assert!(
        history.contains("token:admin (admin"),
        "history says who made each change: {history}"
    );
    server.kill().await;
}

const CATALOG: &str = "deploy/catalog/deprovision-tenant.yaml";

#[tokio::test]
async fn a_deprovisioning_is_planned_triggered_and_followed_to_its_end() {
    let dbs = TestDatabases::on(None);
    let (server, data) = start_server(&dbs).await;
    let token = std::fs::read_to_string(data.join("admin-token"))
        .expect("admin-token")
        .trim()
        .to_owned();
    let ebb = Ebb::new(&server, &data, &dbs);
    let catalog = repo_file(CATALOG);
    let kinds = ebb
        .ok(&[
            "deprovision",
            "apply-catalog",
            catalog.to_str().expect("utf-8 path"),
        ])
        .await;
    assert!(
        row(&kinds, "tenant").contains("DeprovisionTenant"),
        "{kinds}"
    );

    // A tenant on an app stack, on a network stack, on an account; each with a workspace.
    let org = ebb.json(&["orgs", "create", "fleet"]).await;
    let org = string(&org, "id");
    let project = ebb
        .json(&["projects", "create", "--org", &org, "stacks"])
        .await;
    let project = string(&project, "id");
    let mut chain = Vec::new();
    for kind in ["tenant", "app_stack", "network_stack", "account"] {
        let ws = ebb
            .json(&[
                "workspaces",
                "create",
                "--project",
                &project,
                &format!("{kind}-ws"),
            ])
            .await;
        let entity = ebb
            .json(&[
                "deprovision",
                "create-entity",
                "--org",
                &org,
                "--kind",
                kind,
                &format!("acme-{kind}"),
                "--workspace",
                &string(&ws, "id"),
            ])
            .await;
        assert_eq!(entity["state"], "active", "{entity:#}");
        chain.push(string(&entity, "id"));
    }
    for pair in chain.windows(2) {
        let edge = ebb.ok(&["deprovision", "relate", &pair[0], &pair[1]]).await;
        assert!(row(&edge, &pair[0]).contains("runs_on"), "{edge}");
    }
    let tenant = chain[0].clone();

    // Dry run: the four steps, leaves first, and nothing changes.
    let plan = ebb
        .ok(&[
            "deprovision",
            "plan",
            &tenant,
            "--action",
            "DeprovisionTenant",
        ])
        .await;
    let positions: Vec<usize> = [
        "acme-tenant",
        "acme-app_stack",
        "acme-network_stack",
        "acme-account",
    ]
    .iter()
    .map(|n| {
        plan.find(n)
            .unwrap_or_else(|| panic!("{n} missing from\n{plan}"))
    })
    .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{plan}");
    assert!(plan.contains("4 step(s), leaves first"), "{plan}");
    let json = ebb
        .json(&[
            "deprovision",
            "plan",
            &tenant,
            "--action",
            "DeprovisionTenant",
        ])
        .await;
    assert_eq!(json["plan"].as_array().map(Vec::len), Some(4), "{json:#}");
    assert!(json["actionRun"].is_null(), "a dry run starts no run");
    let entities = ebb.ok(&["deprovision", "entities", "--org", &org]).await;
    assert!(row(&entities, &tenant).contains("active"), "{entities}");

    // A bad parameter is refused naming it.
    let r = ebb
        .run(&[
            "deprovision",
            "trigger",
            &tenant,
            "--action",
            "DeprovisionTenant",
            "--param",
            "gracePeriodSeconds=-5",
        ])
        .await;
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(r.stderr.contains("gracePeriodSeconds"), "{}", r.stderr);

    // A runner takes the destroy runs, one at a time.
    let runner = Process::spawn_worker(
        "ebb",
        &[
            "runner",
            "--server",
            &server.url(),
            "--org",
            &org,
            "--simulate",
            "succeed",
            "--simulate-duration",
            "300ms",
            "--claim-wait",
            "1s",
        ],
        &[("EBB_TOKEN", token.clone())],
        dbs.dir(),
    )
    .await
    .expect("ebb runner");

    // Trigger and follow to the end: the final table has every step succeeded, in order.
    let done = ebb
        .ok(&[
            "deprovision",
            "trigger",
            &tenant,
            "--action",
            "DeprovisionTenant",
            "--param",
            "gracePeriodSeconds=3600",
            "--wait",
            "--poll",
            "200ms",
            "--wait-timeout",
            "90s",
        ])
        .await;
    assert!(row(&done, "status").contains("succeeded"), "{done}");
    assert!(done.contains("4 of 4 step(s) done"), "{done}");
    for name in [
        "acme-tenant",
        "acme-app_stack",
        "acme-network_stack",
        "acme-account",
    ] {
        let line = row(&done, name);
        assert!(
            line.contains("succeeded") && line.contains("destroy_run"),
            "{done}"
        );
    }
    let steps: Vec<usize> = [
        "acme-tenant",
        "acme-app_stack",
        "acme-network_stack",
        "acme-account",
    ]
    .iter()
    .map(|n| done.rfind(n).unwrap_or_default())
    .collect();
    assert!(steps.windows(2).all(|w| w[0] < w[1]), "{done}");

    // The JSON of the run, for scripts.
    let runs = ebb.json(&["deprovision", "runs", "--org", &org]).await;
    let run_id = string(&runs, "actionRuns.0.id");
    assert_eq!(
        runs["actionRuns"][0]["status"],
        "ACTION_RUN_STATUS_SUCCEEDED"
    );
    let status = ebb.json(&["deprovision", "status", &run_id]).await;
    assert_eq!(status["steps"].as_array().map(Vec::len), Some(4));

    // The edges wait out their grace period; none is overdue yet. Force one.
    let overdue = ebb.ok(&["deprovision", "overdue", "--org", &org]).await;
    assert!(overdue.contains("no overdue grace periods"), "{overdue}");
    let edges = ebb
        .json(&[
            "deprovision",
            "relationships",
            "--org",
            &org,
            "--state",
            "removing",
        ])
        .await;
    let edges = edges["relationships"]
        .as_array()
        .expect("relationships")
        .clone();
    assert_eq!(edges.len(), 3, "{edges:#?}");
    let edge = string(&edges[0], "id");
    let forced = ebb.json(&["deprovision", "force-finalize", &edge]).await;
    assert_eq!(forced["state"], "RELATIONSHIP_STATE_REMOVED");
    assert_eq!(forced["finalizeMethod"], "force");
    // Twice: no grace period is scheduled any more.
    let r = ebb.run(&["deprovision", "force-finalize", &edge]).await;
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(r.stderr.contains("failed precondition"), "{}", r.stderr);

    // The destroy runs went through the runner.
    let runs = ebb
        .ok(&["runs", "list", "--org", &org, "--source", "deprovision"])
        .await;
    assert_eq!(
        runs.lines().filter(|l| l.contains("succeeded")).count(),
        4,
        "{runs}"
    );
    // The server agrees: the tenant is decommissioned.
    let mut dep = DeprovisionServiceClient::new(server.channel_as(&token).await);
    let entity = dep
        .get_entity(pb::GetEntityRequest {
            entity_id: tenant.clone(),
        })
        .await
        .expect("entity")
        .into_inner()
        .entity
        .expect("entity");
    assert_eq!(entity.state, "decommissioned");
    runner.kill().await;
    server.kill().await;
}
