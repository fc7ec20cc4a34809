//! Records the commit Ebb is built from as `EBB_COMMIT` for `ebb_build_info`: the `EBB_COMMIT`
//! variable when the build sets it (container builds without the repository), else what git
//! says about the checkout, else `unknown`. A missing git never fails the build.

use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=EBB_COMMIT");
    let from_env = std::env::var("EBB_COMMIT")
        .ok()
        .map(|c| c.trim().to_owned())
        .filter(|c| !c.is_empty());
    let commit = match from_env {
        Some(commit) => commit,
        None => {
            // Rebuild when the checkout moves to another commit: HEAD names the branch, the
            // branch's ref (loose or packed) names the commit.
            for path in ["HEAD", "packed-refs"] {
                watch(git(&["rev-parse", "--git-path", path]));
            }
            if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
                watch(git(&["rev-parse", "--git-path", &branch]));
            }
            git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".to_owned())
        }
    };
    println!("cargo:rustc-env=EBB_COMMIT={commit}");
}

/// Reruns this script when `path` changes; paths that do not exist are skipped (cargo would
/// otherwise rebuild every time).
fn watch(path: Option<String>) {
    if let Some(path) = path
        && Path::new(&path).exists()
    {
        println!("cargo:rerun-if-changed={path}");
    }
}
