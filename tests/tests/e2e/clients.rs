//! The generated clients (clients/python, clients/typescript) run the auto-destroy flow against
//! a real `ebb serve`, each from its own language: create an organization, a project and a
//! workspace, schedule its destroy a few seconds ahead, wait for the AUTO_DESTROY run, start
//! `ebb runner --simulate succeed` and wait until the workspace is ARCHIVED with status
//! SUCCEEDED.
//!
//! The toolchains come from `.ci/clients-setup` (pip grpcio-tools, buf, `npm ci`). Outside CI a
//! missing toolchain skips the test with the reason printed; under CI (`CI` set) it fails.

use std::process::Output;
use std::time::Duration;

use crate::support::{describe, ebb_serve, output, repo_root};
use ebb_tests::{Process, TestDatabases, bin_path};
use tokio::process::Command;

/// Whether the test may go on: `missing` is `None` when every tool is there. Outside CI a
/// missing tool skips (printing why); under CI it fails the test.
fn tools_present(test: &str, missing: Option<String>) -> bool {
    match missing {
        None => true,
        Some(why) if std::env::var_os("CI").is_some() => {
            panic!("{test}: {why} (CI must install it: .ci/clients-setup)")
        }
        Some(why) => {
            eprintln!("skipping {test}: {why}; run .ci/clients-setup to install it");
            false
        }
    }
}

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
    let probe = Command::new("python3")
        .args(["-c", "import grpc, grpc_tools.protoc"])
        .output()
        .await;
    let missing = match probe {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!(
            "python3 cannot import grpc and grpc_tools ({})",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Some(format!("python3 is not available ({e})")),
    };
    if !tools_present(TEST, missing) {
        return;
    }

    let out = output(
        "clients/python/generate.sh",
        Command::new("bash").arg(python.join("generate.sh")),
        Duration::from_secs(120),
    )
    .await;
    assert!(out.status.success(), "generate.sh: {}", describe(&out));

    let dbs = TestDatabases::on(None);
    let (server, token) = serve(&dbs).await;
    let out = output(
        TEST,
        Command::new("python3")
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
    let missing = if Command::new("node")
        .arg("--version")
        .output()
        .await
        .is_err()
    {
        Some("node is not available".to_owned())
    } else if Command::new("npm").arg("--version").output().await.is_err() {
        Some("npm is not available".to_owned())
    } else if Command::new("buf").arg("--version").output().await.is_err() {
        Some("buf is not available".to_owned())
    } else {
        [
            "node_modules/@connectrpc/connect-node",
            "node_modules/@bufbuild/protoc-gen-es",
            "node_modules/typescript",
        ]
        .iter()
        .find(|p| !ts.join(p).exists())
        .map(|p| format!("clients/typescript/{p} is missing (npm ci not run)"))
    };
    if !tools_present(TEST, missing) {
        return;
    }

    // Generates src/gen with buf and protoc-gen-es, then type-checks and compiles with tsc.
    let out = output(
        "npm run build",
        Command::new("npm")
            .args(["run", "--silent", "build"])
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
