//! The README is part of the contract: it must list every finding, guest attribute and metric.

use service_proxy_agent::finding::FindingId;

fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap()
}

#[test]
fn every_finding_is_in_the_readme_table() {
    // The README's row is the catalogue's row (src/finding.rs), word for word: adding or changing
    // a finding there without its row here fails.
    let text = readme();
    for id in FindingId::ALL {
        let row = format!(
            "| `{}` | {} | {} | {} | {} |",
            id.as_str(),
            id.severity(),
            id.default_summary(),
            id.default_remediation(),
            id.doc().rsplit(" › ").next().unwrap_or_default()
        );
        assert!(text.contains(&row), "README lacks the row for {id}:\n{row}");
    }
    let rows = text
        .lines()
        .filter(|l| {
            l.strip_prefix("| `")
                .and_then(|r| r.split('`').next())
                .is_some_and(|id| FindingId::ALL.iter().any(|f| f.as_str() == id))
        })
        .count();
    assert_eq!(
        rows,
        FindingId::ALL.len(),
        "a finding has two rows in the README"
    );
}

#[test]
fn every_guest_attribute_and_metric_is_documented() {
    let text = readme();
    use service_proxy_agent::publish::guest_attributes::keys::*;
    for key in [
        BOOTSTRAP_STATUS,
        BOOTSTRAP_LAST_FAILURE,
        PROXY_VERSION,
        PROXY_STATE,
        HEARTBEAT,
        LAST_FAILURE,
        HEALTH,
        FINDINGS,
    ] {
        assert!(
            text.contains(&format!("| `{key}` |")),
            "README lacks guest attribute {key}"
        );
    }
    // Every metric family the endpoint exports.
    let m = service_proxy_agent::publish::metrics::AgentMetrics::new(
        Default::default(),
        Default::default(),
    );
    m.set_cloud_logging(Default::default());
    m.poll_error("envoy_admin");
    m.cycle_done(
        &[],
        service_proxy_agent::publish::metrics::CycleView {
            envoy_state: "LIVE".into(),
            ..Default::default()
        },
        std::time::Instant::now(),
    );
    for line in m.encode().lines().filter(|l| l.starts_with("# TYPE ")) {
        let name = line.split_whitespace().nth(2).unwrap();
        let kind = line.split_whitespace().nth(3).unwrap();
        let exported = if kind == "counter" {
            format!("{name}_total")
        } else {
            name.to_owned()
        };
        assert!(
            text.contains(&format!("`{exported}")),
            "README lacks metric {exported}"
        );
    }
}
