//! The generated clients, installed as their users install them, against a real `ebb serve`.
//!
//! - Python: `python -m build` makes the sdist, then the wheel from the sdist (its build hook
//!   generates the code from the protos the sdist carries). The wheel goes into clean virtual
//!   environments: the sync client runs on the oldest releases it supports
//!   (`clients/python/tests/oldest.txt`, protobuf 5), the asyncio client on the newest
//!   (`newest.txt`, protobuf 7), where mypy also checks the flows against the package's type
//!   stubs.
//! - TypeScript: `npm pack` makes the tarball (its `prepack` generates and compiles), which goes
//!   into a clean npm project; the flows compile there against the package's types and run over
//!   gRPC, gRPC-Web (Node's transport) and `@ebb/client/web` (the browser transport, on fetch).
//!
//! Each runs its flows script (`clients/python/tests/flows.py`, `flows_aio.py`,
//! `clients/typescript/tests/flows.ts`): every service answers and error details decode, a
//! workspace is auto-destroyed, a tenant is deprovisioned leaves first by a runner holding a
//! token the client made, and a client without a token is refused.
//!
//! The toolchains are provisioned by the tests themselves on first use (`tools.rs`: `build`
//! from PyPI, `npm ci`), with pip's and npm's downloads cached under `target/test-tools/`;
//! Python 3 and Node.js must be installed, and a test fails, saying so, where they are not.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::{describe, ebb_serve, output, repo_root};
use crate::tools::{npm_cache, pip_cache, run, tools_dir};
use ebb_tests::{Process, TestDatabases, bin_path};
use tokio::process::Command;
use tokio::sync::OnceCell;

/// The flows each script reports as `PASS <client> <flow>`.
const FLOWS: [&str; 4] = ["services", "auto-destroy", "deprovisioning", "no-token"];
/// The example catalog the deprovisioning flow applies.
const CATALOG: &str = "deploy/catalog/deprovision-tenant.yaml";

/// `ebb serve` on a fresh data directory with a generated admin token; the token is sent by
/// every client call.
async fn serve(dbs: &TestDatabases) -> (Process, String) {
    let token = format!("ebb-test-{}", uuid::Uuid::new_v4().simple());
    let (p, _) = ebb_serve(dbs, &[("EBB_ADMIN_TOKEN", token.clone())]).await;
    (p, token)
}

/// Runs a flows script with `ADDR TOKEN CATALOG`; checks that every flow passed and returns
/// its standard output.
async fn run_flows(client: &str, cmd: &mut Command, server: &Process, token: &str) -> String {
    let out = output(
        client,
        cmd.arg(server.addr.to_string())
            .arg(token)
            .arg(repo_root().join(CATALOG))
            .env("EBB_BIN", bin_path("ebb")),
        Duration::from_secs(300),
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    for flow in FLOWS {
        assert!(
            out.status.success() && stdout.contains(&format!("PASS {client} {flow}\n")),
            "{client}: the {flow} flow did not pass: {}\n--- ebb serve log\n{}",
            describe(&out),
            server.log_tail()
        );
    }
    stdout
}

/// A fresh directory under `target/test-tools/clients/`.
fn fresh_dir(name: &str) -> PathBuf {
    let dir = tools_dir().join("clients").join(name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).expect("remove the previous run's directory");
    }
    std::fs::create_dir_all(&dir).expect("mkdir");
    dir
}

/// The one file in `dir` whose name ends with `suffix`.
fn built(dir: &Path, suffix: &str) -> PathBuf {
    let found: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read the output directory")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one *{suffix} in {}: {found:?}",
        dir.display()
    );
    found.into_iter().next().expect("one")
}

/// The names of the files in a wheel (a zip) or a tarball, as Python's zipfile and tarfile
/// read them.
async fn archive_files(python: &Path, archive: &Path) -> Vec<String> {
    const LIST: &str = "import sys, tarfile, zipfile\n\
        p = sys.argv[1]\n\
        names = zipfile.ZipFile(p).namelist() if p.endswith('.whl') else tarfile.open(p).getnames()\n\
        print('\\n'.join(names))";
    let out = output(
        "list an archive",
        Command::new(python).args(["-c", LIST]).arg(archive),
        Duration::from_secs(60),
    )
    .await;
    assert!(
        out.status.success(),
        "listing {}: {}",
        archive.display(),
        describe(&out)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Asserts that `files` holds each of `wanted` and nothing `unwanted` matches.
fn assert_contents(
    what: &str,
    files: &[String],
    wanted: &[String],
    unwanted: &dyn Fn(&str) -> bool,
) {
    for w in wanted {
        assert!(
            files.iter().any(|f| f == w),
            "{what} lacks {w}; it holds:\n{}",
            files.join("\n")
        );
    }
    let stray: Vec<&String> = files.iter().filter(|f| unwanted(f)).collect();
    assert!(stray.is_empty(), "{what} holds {stray:?}");
}

/// The Python client's wheel, built once per test run: `python -m build` makes the sdist and
/// builds the wheel from it, as an index's users would.
async fn python_wheel() -> &'static Path {
    static WHEEL: OnceCell<PathBuf> = OnceCell::const_new();
    WHEEL
        .get_or_init(|| async {
            let python = crate::tools::python_bin().await.join("python3");
            let out = fresh_dir("python-dist");
            run(
                "building the Python client's sdist and wheel (python -m build)",
                "PyPI",
                Command::new(&python)
                    .args(["-m", "build", "--outdir"])
                    .arg(&out)
                    .arg(repo_root().join("clients/python"))
                    .env("PIP_CACHE_DIR", pip_cache()),
            )
            .await;
            let (sdist, wheel) = (built(&out, ".tar.gz"), built(&out, ".whl"));
            let root = "ebb_client-0.1.0";
            let sdist_wanted = [
                format!("{root}/pyproject.toml"),
                format!("{root}/hatch_build.py"),
                format!("{root}/ebb_client/py.typed"),
                format!("{root}/proto/ebb/lifecycle/v1/deprovision_service.proto"),
                format!("{root}/proto/ebb/audit/v1/audit_service.proto"),
            ];
            assert_contents(
                "the sdist",
                &archive_files(&python, &sdist).await,
                &sdist_wanted,
                &|f| f.contains("_generated") || f.contains("/tests/"),
            );
            let generated = "ebb_client/_generated/ebb";
            let mut wheel_wanted: Vec<String> = [
                "ebb_client/py.typed",
                "ebb_client/aio.py",
                "ebb_client/errors.py",
            ]
            .map(str::to_owned)
            .into();
            for service in [
                "audit/v1/audit_service",
                "lifecycle/v1/lifecycle_service",
                "lifecycle/v1/deprovision_service",
                "lifecycle/v1/runner_service",
                "lifecycle/v1/scheduling_service",
                "lifecycle/v1/token_service",
                "notifier/v1/notifier_service",
                "scheduler/v1/scheduler_service",
            ] {
                for file in ["_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi"] {
                    wheel_wanted.push(format!("{generated}/{service}{file}"));
                }
            }
            assert_contents(
                "the wheel",
                &archive_files(&python, &wheel).await,
                &wheel_wanted,
                &|f| f.starts_with("tests/") || f.ends_with(".proto") || f.starts_with("ebb/"),
            );
            wheel
        })
        .await
}

/// A clean virtual environment named `name` with the wheel and the pins of `requirements`
/// (a file of `clients/python/tests`) installed; its `bin` directory.
async fn python_env(name: &str, requirements: &str) -> PathBuf {
    let wheel = python_wheel().await;
    let venv = fresh_dir(name);
    run(
        &format!("creating a clean virtual environment in {}", venv.display()),
        "python3 -m venv",
        Command::new("python3").args(["-m", "venv"]).arg(&venv),
    )
    .await;
    let bin = venv.join("bin");
    run(
        &format!("installing the wheel with {requirements} (pip)"),
        "PyPI",
        Command::new(bin.join("python3"))
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .arg("--cache-dir")
            .arg(pip_cache())
            .arg(wheel)
            .arg("-r")
            .arg(repo_root().join("clients/python/tests").join(requirements)),
    )
    .await;
    bin
}

/// Asserts that the flows imported the package installed in `venv` (not the sources) on
/// `runtime` (such as `protobuf 5.27.2`).
fn assert_installed(stdout: &str, venv_bin: &Path, runtime: &str) {
    let venv = venv_bin
        .parent()
        .expect("venv")
        .to_string_lossy()
        .into_owned();
    let line = stdout
        .lines()
        .find(|l| l.starts_with("ebb_client "))
        .unwrap_or_default();
    assert!(
        line.contains(&format!("from {venv}/")) && line.contains(runtime),
        "the flows ran {line:?}, not the wheel in {venv} on {runtime}"
    );
}

#[tokio::test]
async fn python_client_from_its_wheel_runs_the_flows_on_the_oldest_releases_it_supports() {
    let bin = python_env("python-oldest", "oldest.txt").await;
    let dbs = TestDatabases::on(None);
    let (server, token) = serve(&dbs).await;
    let stdout = run_flows(
        "python",
        Command::new(bin.join("python3")).arg(repo_root().join("clients/python/tests/flows.py")),
        &server,
        &token,
    )
    .await;
    assert_installed(&stdout, &bin, "(grpcio 1.66.2, protobuf 5.27.2)");
    server.kill().await;
}

#[tokio::test]
async fn python_asyncio_client_from_its_wheel_runs_the_flows_on_the_newest_releases() {
    let bin = python_env("python-newest", "newest.txt").await;
    let tests = repo_root().join("clients/python/tests");
    // The flows type-check against the installed package's stubs: messages, and the asyncio
    // stubs whose calls are awaited.
    let out = output(
        "mypy",
        Command::new(bin.join("python3"))
            .args(["-m", "mypy", "--strict", "--cache-dir"])
            .arg(bin.parent().expect("venv").join(".mypy_cache"))
            .args(["flows.py", "flows_aio.py"])
            .current_dir(&tests),
        Duration::from_secs(300),
    )
    .await;
    assert!(
        out.status.success(),
        "mypy --strict on the flows: {}",
        describe(&out)
    );

    let dbs = TestDatabases::on(None);
    let (server, token) = serve(&dbs).await;
    let stdout = run_flows(
        "python-aio",
        Command::new(bin.join("python3")).arg(tests.join("flows_aio.py")),
        &server,
        &token,
    )
    .await;
    assert_installed(&stdout, &bin, "(grpcio 1.85.3, protobuf 7.36.2)");
    server.kill().await;
}

/// The TypeScript client's tarball, made once per test run by `npm pack` (whose `prepack`
/// generates the code with buf and protoc-gen-es and compiles it).
async fn typescript_tarball() -> &'static Path {
    static TARBALL: OnceCell<PathBuf> = OnceCell::const_new();
    TARBALL
        .get_or_init(|| async {
            crate::tools::typescript_packages().await;
            let out = fresh_dir("typescript-dist");
            let pack = output(
                "npm pack",
                Command::new("npm")
                    .args(["pack", "--silent", "--pack-destination"])
                    .arg(&out)
                    .arg("--cache")
                    .arg(npm_cache())
                    .current_dir(repo_root().join("clients/typescript")),
                Duration::from_secs(300),
            )
            .await;
            assert!(pack.status.success(), "npm pack: {}", describe(&pack));
            let tarball = built(&out, ".tgz");
            let python = crate::tools::python_bin().await.join("python3");
            let mut wanted: Vec<String> = [
                "package/package.json",
                "package/README.md",
                "package/dist/gen/ebb/lifecycle/v1/deprovision_service_pb.js",
                "package/dist/gen/google/rpc/error_details_pb.d.ts",
            ]
            .map(str::to_owned)
            .into();
            for entry in ["index", "web", "services", "errors"] {
                wanted.push(format!("package/dist/{entry}.js"));
                wanted.push(format!("package/dist/{entry}.d.ts"));
            }
            // Compiled code, its types and the manifest: no sources, tests or protos.
            assert_contents(
                "the npm tarball",
                &archive_files(&python, &tarball).await,
                &wanted,
                &|f| {
                    !(f.starts_with("package/dist/")
                        || ["package/package.json", "package/README.md"].contains(&f))
                        || f.contains("test")
                },
            );
            tarball
        })
        .await
}

/// A clean npm project with the tarball installed, and the flows compiled against it.
async fn typescript_project() -> PathBuf {
    let tarball = typescript_tarball().await;
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("clients/typescript/package.json"))
            .expect("clients/typescript/package.json"),
    )
    .expect("package.json is JSON");
    assert!(
        manifest.get("private").is_none(),
        "the package must be publishable"
    );
    let dev = |name: &str| {
        let version = manifest["devDependencies"][name]
            .as_str()
            .unwrap_or_else(|| panic!("devDependencies.{name}"));
        format!("{name}@{version}")
    };
    let dir = fresh_dir("typescript-project");
    std::fs::create_dir_all(dir.join("src")).expect("mkdir");
    std::fs::write(
        dir.join("package.json"),
        r#"{ "name": "ebb-client-check", "private": true, "type": "module" }"#,
    )
    .expect("package.json");
    // Strict, and checking the package's declarations too (no skipLibCheck).
    std::fs::write(
        dir.join("tsconfig.json"),
        r#"{
  "compilerOptions": {
    "target": "ES2022", "module": "NodeNext", "moduleResolution": "NodeNext",
    "strict": true, "outDir": "dist", "rootDir": "src", "types": ["node"]
  },
  "include": ["src/**/*.ts"]
}"#,
    )
    .expect("tsconfig.json");
    std::fs::copy(
        repo_root().join("clients/typescript/tests/flows.ts"),
        dir.join("src/flows.ts"),
    )
    .expect("copy flows.ts");
    run(
        "installing the tarball into a clean npm project (npm install)",
        "the npm registry",
        Command::new("npm")
            .args([
                "install",
                "--no-audit",
                "--no-fund",
                "--loglevel=error",
                "--cache",
            ])
            .arg(npm_cache())
            .arg(tarball)
            .arg(dev("typescript"))
            .arg(dev("@types/node"))
            .current_dir(&dir),
    )
    .await;
    let tsc = output(
        "tsc",
        Command::new(dir.join("node_modules/.bin/tsc"))
            .args(["-p", "."])
            .current_dir(&dir),
        Duration::from_secs(300),
    )
    .await;
    assert!(
        tsc.status.success(),
        "the flows do not compile against the installed package: {}",
        describe(&tsc)
    );
    dir
}

#[tokio::test]
async fn typescript_client_from_its_tarball_runs_the_flows_over_grpc_grpc_web_and_fetch() {
    let node = Command::new("node").arg("--version").output().await;
    assert!(
        node.is_ok_and(|o| o.status.success()),
        "the TypeScript client's test needs Node.js (node and npm on PATH)"
    );
    let project = typescript_project().await;
    let dbs = TestDatabases::on(None);
    let (server, token) = serve(&dbs).await;
    // Node's gRPC transport (HTTP/2), its gRPC-Web one (HTTP/1.1), and the browser's
    // (`@ebb/client/web`, on fetch).
    for (protocol, client) in [
        ("grpc", "typescript"),
        ("grpc-web", "typescript over grpc-web"),
        ("web", "typescript over web"),
    ] {
        run_flows(
            client,
            Command::new("node")
                .arg(project.join("dist/flows.js"))
                .env("EBB_PROTOCOL", protocol)
                .current_dir(&project),
            &server,
            &token,
        )
        .await;
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
