//! Stamps the binary with the git commit and commit date it was built from,
//! for `swoosh --version`: runbooks ask operators to compare builds across
//! hosts (a divergence between replicas is first suspected to be two
//! builds), and the package version alone is the same for every build.
//! Outside this workspace's own git checkout (a source tarball, even one
//! unpacked inside another repository) the stamp says so.

use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let o = Command::new("git").args(args).output().ok()?;
    let out = String::from_utf8_lossy(&o.stdout).trim().to_string();
    (o.status.success() && !out.is_empty()).then_some(out)
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .and_then(|p| p.canonicalize().ok());
    let ours = git(&["rev-parse", "--show-toplevel"])
        .and_then(|t| Path::new(&t).canonicalize().ok())
        .is_some_and(|t| Some(t) == workspace);
    let stamp = match (
        ours,
        git(&["rev-parse", "--short=12", "HEAD"]),
        git(&["log", "-1", "--format=%cd", "--date=short"]),
    ) {
        (true, Some(c), Some(d)) => format!("{c} {d}"),
        _ => "not built from a git checkout".to_string(),
    };
    println!("cargo:rustc-env=SWOOSH_BUILD={stamp}");
    if !ours {
        return;
    }
    // Built again when HEAD moves. The reflog of HEAD is appended at every
    // commit, checkout and reset (also in a worktree, whose HEAD and
    // reflog are its own); the branch refs (a directory: Cargo watches
    // every file in it) and packed-refs cover a ref moved another way.
    // Only paths that exist: Cargo reruns a build script on every build
    // while one it watches is missing.
    let mut watch = vec![];
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        watch.push(format!("{dir}/HEAD"));
        watch.push(format!("{dir}/logs/HEAD"));
    }
    if let Some(common) = git(&["rev-parse", "--path-format=absolute", "--git-common-dir"]) {
        watch.push(format!("{common}/refs/heads"));
        watch.push(format!("{common}/packed-refs"));
    }
    for path in watch {
        if Path::new(&path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}
