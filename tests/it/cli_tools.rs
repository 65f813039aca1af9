//! The command line as an operator's tools see it: the generated completions loaded by bash, zsh
//! and fish (and asked to complete), the man page rendered by `man -l`, `version` naming the
//! commit, `NO_COLOR` honoured, `--json` carrying `schema_version`.

use crate::support;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use support::{agent, closed_port, run, stderr, stdout};

/// Runs the agent with `args` (no metadata server needed: these commands do not read it).
fn spa(args: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = agent(&format!("127.0.0.1:{}", closed_port()), dir.path());
    cmd.args(args);
    run(cmd, Duration::from_secs(20)).0
}

/// The output of a generator command, written to `dir/name`.
fn generated(dir: &Path, name: &str, args: &[&str]) -> std::path::PathBuf {
    let out = spa(args);
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    assert!(!out.stdout.is_empty(), "{args:?} printed nothing");
    let path = dir.join(name);
    std::fs::write(&path, &out.stdout).unwrap();
    path
}

fn tool(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} ({e}): tests/setup-system.sh installs it"))
}

#[test]
fn bash_loads_the_completion_and_completes_subcommands() {
    let dir = tempfile::tempdir().unwrap();
    let file = generated(dir.path(), "spa.bash", &["completions", "bash"]);
    let file = file.to_str().unwrap();
    let syntax = tool("bash", &["-n", file]);
    assert!(syntax.status.success(), "bash -n: {}", stderr(&syntax));
    // Loaded as bash-completion would, then asked to complete `service-proxy-agent do`.
    let script = format!(
        r#"source {file}
spec=$(complete -p service-proxy-agent) || exit 3
fn=$(printf '%s\n' "$spec" | sed -n 's/.*-F \([^ ]*\) .*/\1/p')
COMP_WORDS=(service-proxy-agent do); COMP_CWORD=1; COMP_LINE="service-proxy-agent do"; COMP_POINT=${{#COMP_LINE}}
"$fn" service-proxy-agent do service-proxy-agent
printf '%s\n' "${{COMPREPLY[@]}}""#
    );
    let out = tool("bash", &["-c", &script]);
    assert!(out.status.success(), "{}", stderr(&out));
    let words: Vec<String> = stdout(&out).lines().map(str::to_owned).collect();
    assert_eq!(words, ["doctor"], "{}", stderr(&out));
}

#[test]
fn zsh_and_fish_load_their_completions() {
    let dir = tempfile::tempdir().unwrap();
    let zsh = generated(dir.path(), "_service-proxy-agent", &["completions", "zsh"]);
    let out = tool("zsh", &["-n", zsh.to_str().unwrap()]);
    assert!(out.status.success(), "zsh -n: {}", stderr(&out));
    assert!(
        std::fs::read_to_string(&zsh)
            .unwrap()
            .starts_with("#compdef service-proxy-agent"),
        "zsh autoloads a completion by its #compdef line"
    );

    let fish = generated(dir.path(), "spa.fish", &["completions", "fish"]);
    let fish = fish.to_str().unwrap();
    let out = tool("fish", &["-n", fish]);
    assert!(out.status.success(), "fish -n: {}", stderr(&out));
    let out = tool(
        "fish",
        &[
            "--no-config",
            "-c",
            &format!("source {fish}; complete -C 'service-proxy-agent do'"),
        ],
    );
    assert!(
        stdout(&out).starts_with("doctor\t"),
        "fish completion: {}{}",
        stdout(&out),
        stderr(&out)
    );
}

#[test]
fn man_renders_the_page_without_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let page = generated(dir.path(), "service-proxy-agent.8", &["man"]);
    let out = Command::new("man")
        .args(["--warnings", "-l"])
        .arg(&page)
        .env("MANWIDTH", "100")
        .output()
        .expect("man (man-db): tests/setup-system.sh installs it");
    assert!(out.status.success(), "man -l: {}", stderr(&out));
    assert_eq!(stderr(&out), "", "groff warnings");
    let text = stdout(&out);
    for expect in [
        "service-proxy-agent(8)",
        "NAME",
        "SYNOPSIS",
        "--envoy-admin",
        "doctor",
        "intercept",
    ] {
        assert!(text.contains(expect), "{expect} not in the page:\n{text}");
    }
}

#[test]
fn version_names_the_commit() {
    let out = spa(&["version"]);
    assert!(out.status.success());
    let line = stdout(&out);
    let commit = line
        .split("(commit ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .unwrap_or_else(|| panic!("no commit in {line:?}"));
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output();
    match head {
        Ok(h) if h.status.success() => {
            assert_eq!(commit, String::from_utf8_lossy(&h.stdout).trim(), "{line}")
        }
        // Built outside a git checkout (a source tarball): said plainly.
        _ => assert_eq!(commit, "unknown", "{line}"),
    }
    assert_eq!(
        stdout(&spa(&["--version"])),
        line,
        "--version and version agree"
    );
}

#[test]
fn no_color_turns_colour_off() {
    let esc = |o: &Output| o.stdout.contains(&0x1b) || o.stderr.contains(&0x1b);
    let dir = tempfile::tempdir().unwrap();
    let help = |env: &[(&str, &str)]| {
        let mut cmd = agent(&format!("127.0.0.1:{}", closed_port()), dir.path());
        cmd.env_remove("NO_COLOR").arg("--help");
        for (k, v) in env {
            cmd.env(k, v);
        }
        run(cmd, Duration::from_secs(20)).0
    };
    // Forced colour shows that colour is used at all; NO_COLOR wins over it.
    assert!(
        esc(&help(&[("CLICOLOR_FORCE", "1")])),
        "no colour even when forced"
    );
    assert!(!esc(&help(&[("CLICOLOR_FORCE", "1"), ("NO_COLOR", "1")])));
}

#[test]
fn status_json_carries_its_schema_version() {
    let out = spa(&["status", "--json"]);
    assert_eq!(out.status.code(), Some(2), "metadata server unreachable");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("status --json ({e}): {}", stdout(&out)));
    assert_eq!(v["schema_version"], 1, "{v}");
}
