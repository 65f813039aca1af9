//! The fuzz targets' checks on the stable toolchain, without libFuzzer: every input a target
//! once crashed on (`tests/fixtures/fuzz/<target>/`), and the real fixtures the corpora are
//! seeded from, go through the same harness as the fuzzer (`fuzz/harness/`), which panics when a
//! parser panics or one of its properties fails. Inputs are added here as the fuzzer finds them;
//! `tests/fuzz.sh` runs the fuzzer itself.

#[path = "../../fuzz/harness/mod.rs"]
mod harness;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn files_in(dir: &Path, suffixes: &[&str]) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.is_file() && {
                let name = p.file_name().unwrap().to_string_lossy();
                !name.starts_with('.') && suffixes.iter().any(|s| name.ends_with(s))
            }
        })
        .collect();
    files.sort();
    files
}

/// Runs every file through `run`; reports all failing files at once.
fn replay(target: &str, run: fn(&[u8]), files: &[PathBuf], prefix: &[u8]) -> usize {
    let mut failed = Vec::new();
    for f in files {
        let mut input = prefix.to_vec();
        input.extend(std::fs::read(f).unwrap());
        if catch_unwind(AssertUnwindSafe(|| run(&input))).is_err() {
            failed.push(f.display().to_string());
        }
    }
    assert!(failed.is_empty(), "{target} fails on {failed:#?}");
    files.len()
}

fn target(name: &str) -> fn(&[u8]) {
    harness::TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, f)| *f)
        .unwrap()
}

#[test]
fn every_input_the_fuzzer_crashed_on_now_passes() {
    let dir = fixtures().join("fuzz");
    let mut total = 0;
    for (name, run) in harness::TARGETS {
        total += replay(name, *run, &files_in(&dir.join(name), &[""]), b"");
    }
    // Every subdirectory is a target's: a misnamed one would be silently skipped.
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            name == "README.md" || harness::TARGETS.iter().any(|(t, _)| *t == name),
            "tests/fixtures/fuzz/{name} is not a fuzz target"
        );
    }
    assert!(total > 0, "no regression input under {}", dir.display());
}

#[test]
fn the_seed_fixtures_pass_every_harness() {
    let fx = fixtures();
    let envoy = fx.join("envoy");
    let mut n = 0;
    n += replay(
        "server_info",
        target("server_info"),
        &files_in(&envoy, &["server_info.json"]),
        b"",
    );
    let dumps: Vec<PathBuf> = files_in(&envoy, &[".json"])
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("config_dump"))
        .collect();
    n += replay("listeners", target("listeners"), &dumps, b"");
    n += replay(
        "clusters",
        target("clusters"),
        &files_in(&envoy, &["clusters-health.json"]),
        b"",
    );
    n += replay("stats", target("stats"), &files_in(&envoy, &[".txt"]), b"");
    let mut rules = files_in(&fx.join("iptables"), &[".save", ".rules"]);
    rules.extend(files_in(&fx.join("intercept"), &[".restore"]));
    n += replay("iptables_save", target("iptables_save"), &rules, b"");
    let logs = files_in(&fx.join("logs"), &[".log"]);
    // Both filters, the default entry cap and a 64-byte one.
    n += replay(
        "log_classifier",
        target("log_classifier"),
        &logs,
        b"\x00\x00\x12\x34",
    );
    n += replay(
        "log_classifier",
        target("log_classifier"),
        &logs,
        b"\x01\x10\xab\xcd",
    );
    n += replay(
        "service_proxy_metadata",
        target("service_proxy_metadata"),
        &files_in(&fx.join("metadata"), &[".json"]),
        b"",
    );
    assert!(n >= 60, "only {n} fixtures found");
}

/// A kube-proxy-sized `iptables-save` (10,000 services: 20,000 chains, 30,000 rules, 2 MB).
/// Chain lookups were linear per line, so this took ~3 s to parse (about 90 ms now); found while
/// fuzzing `iptables_save` for slow inputs. No timing is asserted: the test keeps the input
/// size in the suite and checks that every rule still lands in its chain, in order.
#[test]
fn a_kube_proxy_sized_save_parses_with_every_rule_in_its_chain() {
    use service_proxy_agent::observe::iptables::{Target, parse_save};
    let n = 10_000;
    let mut text = String::from(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
         :POSTROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n",
    );
    for i in 0..n {
        text.push_str(&format!(
            ":KUBE-SVC-{i:08X} - [0:0]\n:KUBE-SEP-{i:08X} - [0:0]\n"
        ));
    }
    text.push_str("-A OUTPUT -j KUBE-SERVICES\n");
    for i in 0..n {
        let (a, b) = (i >> 8, i & 255);
        text.push_str(&format!(
            "-A KUBE-SERVICES -d 10.0.{a}.{b}/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-{i:08X}\n\
             -A KUBE-SVC-{i:08X} -j KUBE-SEP-{i:08X}\n\
             -A KUBE-SEP-{i:08X} -p tcp -m tcp -j DNAT --to-destination 10.200.{a}.{b}:8080\n"
        ));
    }
    text.push_str("COMMIT\n");

    let rs = parse_save(&text);
    assert!(rs.unparsed.is_empty(), "{:?}", rs.unparsed.first());
    let nat = rs.table("nat").unwrap();
    assert_eq!(nat.chains.len(), 5 + 2 * n);
    let services = nat.chain("KUBE-SERVICES").unwrap();
    assert_eq!(services.rules.len(), n);
    for (i, r) in services.rules.iter().enumerate() {
        assert_eq!(
            r.spec.target,
            Some(Target::Jump(format!("KUBE-SVC-{i:08X}")))
        );
    }
    let last = nat.chain(&format!("KUBE-SEP-{:08X}", n - 1)).unwrap();
    assert!(last.declared && last.rules.len() == 1);
    assert!(
        last.rules[0]
            .text()
            .starts_with(&format!("-A {} ", last.name))
    );
}
