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
    // The same flow over gRPC (HTTP/2) and over gRPC-Web (HTTP/1.1), as browsers speak it.
    for (protocol, test) in [
        ("grpc", TEST.to_owned()),
        ("grpc-web", format!("{TEST} over grpc-web")),
    ] {
        let out = output(
            &test,
            Command::new("node")
                .arg(ts.join("dist/tests/auto_destroy.js"))
                .arg(server.addr.to_string())
                .arg(&token)
                .env("EBB_BIN", bin_path("ebb"))
                .env("EBB_PROTOCOL", protocol)
                .current_dir(&ts),
            Duration::from_secs(180),
        )
        .await;
        assert_passed(&test, &out, &server);
    }
    server.kill().await;
}

#[tokio::test]
async fn browsers_of_configured_origins_only_may_call_over_grpc_web() {
    let dbs = TestDatabases::on(None);
    let allowed = "https://console.example.com";
    let (server, _) = ebb_serve(
        &dbs,
        &[("EBB_GRPC_WEB__ALLOWED_ORIGINS", format!("[\"{allowed}\"]"))],
    )
    .await;
    let url = format!(
        "http://{}/ebb.lifecycle.v1.LifecycleService/ListOrganizations",
        server.addr
    );
    let http = reqwest::Client::builder()
        .http1_only()
        .build()
        .expect("client");
    let preflight = |origin: &'static str| {
        http.request(reqwest::Method::OPTIONS, &url)
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type,x-grpc-web",
            )
            .send()
    };
    let ok = preflight(allowed).await.expect("preflight");
    assert_eq!(
        ok.headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().expect("ascii")),
        Some(allowed)
    );
    let other = preflight("https://evil.example.com")
        .await
        .expect("preflight");
    assert!(other.headers().get("access-control-allow-origin").is_none());

    // A gRPC-Web call over HTTP/1.1: an empty ListOrganizations request (a zero-length
    // message frame) answers in the body's trailer frame, with the admin token.
    let call = http
        .post(&url)
        .header("origin", allowed)
        .header("content-type", "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .header(
            "authorization",
            format!("Bearer {}", ebb_tests::ADMIN_TOKEN),
        )
        .body(vec![0u8, 0, 0, 0, 0])
        .send()
        .await
        .expect("gRPC-Web call");
    assert_eq!(call.status(), 200);
    assert_eq!(
        call.headers()["access-control-allow-origin"]
            .to_str()
            .expect("ascii"),
        allowed
    );
    let exposed = call.headers()["access-control-expose-headers"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(exposed.contains("grpc-status"), "{exposed}");
    let body = call.bytes().await.expect("body");
    let trailers = String::from_utf8_lossy(&body);
    assert!(trailers.contains("grpc-status:0"), "{trailers}");
    server.kill().await;
}
