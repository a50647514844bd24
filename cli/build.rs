//! Stamps the binary with the git commit and commit date it was built from,
//! for `swoosh --version`: runbooks ask operators to compare builds across
//! hosts (a divergence between replicas is first suspected to be two
//! builds), and the package version alone is the same for every build.
//! Outside a git checkout (a source tarball) the stamp says so.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let o = Command::new("git").args(args).output().ok()?;
    let out = String::from_utf8_lossy(&o.stdout).trim().to_string();
    (o.status.success() && !out.is_empty()).then_some(out)
}

fn main() {
    let commit = git(&["rev-parse", "--short=12", "HEAD"]);
    let date = git(&["log", "-1", "--format=%cd", "--date=short"]);
    let stamp = match (commit, date) {
        (Some(c), Some(d)) => format!("{c} {d}"),
        _ => "not built from a git checkout".to_string(),
    };
    println!("cargo:rustc-env=SWOOSH_BUILD={stamp}");
    // Built again when HEAD moves: HEAD itself (a checkout of another
    // branch or commit) and the branch it names (a new commit).
    // Only files that exist: Cargo reruns a build script on every build
    // while one it watches is missing (a packed branch has no loose ref).
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        let mut watch = vec![format!("{dir}/HEAD"), format!("{dir}/packed-refs")];
        if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
            watch.push(format!("{dir}/{branch}"));
        }
        for path in watch {
            if std::path::Path::new(&path).exists() {
                println!("cargo:rerun-if-changed={path}");
            }
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
