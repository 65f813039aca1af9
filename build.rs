//! Stamps the commit the agent is built from into `SPA_GIT_COMMIT` (`version`, the
//! `service_proxy_agent_build_info` metric). `SPA_GIT_COMMIT` in the environment wins (a build
//! from a source tarball has no `.git`); without either it is `unknown`. Only `git` is run: no
//! build dependency.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?;
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_owned())
}

fn main() {
    println!("cargo:rerun-if-env-changed=SPA_GIT_COMMIT");
    let from_env = std::env::var("SPA_GIT_COMMIT").ok().filter(|c| {
        !c.is_empty()
            && c.len() <= 64
            && c.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    });
    let commit = from_env
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_owned());
    // Rebuild when HEAD moves: HEAD itself (a checkout), the branch's ref (a commit), or the
    // packed refs (a `git gc`). Works in a worktree too (HEAD in its git dir, refs in the common one).
    if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
        println!("cargo:rerun-if-changed={dir}/HEAD");
    }
    if let Some(common) = git(&["rev-parse", "--git-common-dir"]) {
        println!("cargo:rerun-if-changed={common}/packed-refs");
        if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
            println!("cargo:rerun-if-changed={common}/{r}");
        }
    }
    println!("cargo:rustc-env=SPA_GIT_COMMIT={commit}");
}
