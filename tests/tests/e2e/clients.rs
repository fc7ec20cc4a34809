//! The generated clients (clients/python, clients/typescript) run the auto-destroy flow against
//! a real `ebb serve`, each from its own language: create an organization, a project and a
//! workspace, schedule its destroy a few seconds ahead, wait for the AUTO_DESTROY run, start
//! `ebb runner --simulate succeed` and wait until the workspace is ARCHIVED with status
//! SUCCEEDED.
//!
//! The toolchains are provisioned by the tests themselves on first use (`tools.rs`: a virtual
//! environment with the pinned pip packages, buf from npm, `npm ci`); Python 3 and Node.js must
//! be installed, and a test fails, saying so, where they are not.

use std::process::Output;
use std::time::Duration;

use crate::support::{describe, ebb_serve, output, repo_root};
use ebb_tests::{Process, TestDatabases, bin_path};
use tokio::process::Command;

/// `ebb serve` on a fresh data directory with a generated admin token; the token is sent by
/// every client call.
async fn serve(dbs: &TestDatabases) -> (Process, String) {
    let token = format!("ebb-test-{}", uuid::Uuid::new_v4().simple());
    let (p, _) = ebb_serve(dbs, &[("EBB_ADMIN_TOKEN", token.clone())]).await;
    (p, token)
}

/// Checks the flow's answer and returns its output on success.
fn assert_passed(test: &str, out: &Output, server: &Process) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(&format!("PASS {test}")),
        "{test} failed: {}\n--- ebb serve log\n{}",
        describe(out),
        server.log_tail()
    );
}

#[tokio::test]
async fn python_client_runs_the_auto_destroy_flow() {
    const TEST: &str = "python auto-destroy";
    let root = repo_root();
    let python = root.join("clients/python");
    let bin = crate::tools::python_bin().await;
    let out = output(
        "clients/python/generate.sh",
        Command::new("bash")
            .arg(python.join("generate.sh"))
            .env("PYTHON", bin.join("python3")),
        Duration::from_secs(120),
    )
    .await;
    assert!(out.status.success(), "generate.sh: {}", describe(&out));

    let dbs = TestDatabases::on(None);
    let (server, token) = serve(&dbs).await;
    let out = output(
        TEST,
        Command::new(bin.join("python3"))
            .arg(python.join("tests/auto_destroy.py"))
            .arg(server.addr.to_string())
            .arg(&token)
            .env("EBB_BIN", bin_path("ebb"))
            .current_dir(&root),
        Duration::from_secs(180),
    )
    .await;
    assert_passed(TEST, &out, &server);
    server.kill().await;
}

#[tokio::test]
async fn typescript_client_runs_the_auto_destroy_flow() {
    const TEST: &str = "typescript auto-destroy";
    let root = repo_root();
    let ts = root.join("clients/typescript");
    let node = Command::new("node").arg("--version").output().await;
    assert!(
        node.is_ok_and(|o| o.status.success()),
        "{TEST} needs Node.js (node and npm on PATH)"
    );
    let buf = crate::tools::buf_bin().await;
    crate::tools::typescript_packages().await;
    // Generates src/gen with buf and protoc-gen-es, then type-checks and compiles with tsc.
    let out = output(
        "npm run build",
        Command::new("npm")
            .args(["run", "--silent", "build"])
            .env("PATH", crate::tools::path_with(&[buf]))
            .current_dir(&ts),
        Duration::from_secs(300),
    )
    .await;
    assert!(
        out.status.success(),
        "clients/typescript npm run build: {}",
        describe(&out)
    );

    let dbs = TestDatabases::on(None);
    let (server, token) = serve(&dbs).await;
    let out = output(
        TEST,
        Command::new("node")
            .arg(ts.join("dist/tests/auto_destroy.js"))
            .arg(server.addr.to_string())
            .arg(&token)
            .env("EBB_BIN", bin_path("ebb"))
            .current_dir(&ts),
        Duration::from_secs(180),
    )
    .await;
    assert_passed(TEST, &out, &server);
    server.kill().await;
}
