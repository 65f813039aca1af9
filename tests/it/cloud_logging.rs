//! The Cloud Logging sink with the real `gcp_auth` crate: a freshly generated service-account
//! key whose `token_uri` is a loopback token endpoint, and a loopback `entries:write` endpoint
//! that checks what arrives. No token may appear in any log line.

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use service_proxy_agent::publish::cloud_logging::{self, GcpAuthTokens, Target};
use service_proxy_agent::publish::log::{AgentLogLayer, LogOutput};
use testkit::discovery_schema::Discovery;
use testkit::http_stub::{HttpStub, Reply};
use tracing_subscriber::prelude::*;

const TOKEN: &str = "ya29.c.test-token-0123456789abcdef";

/// A real RSA key (PKCS#8 PEM) from openssl, as Google issues for service accounts.
fn rsa_key_pem() -> String {
    let out = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ])
        .output()
        .expect("openssl is needed to generate a service-account key (apt-get install openssl)");
    assert!(out.status.success(), "openssl genpkey failed");
    String::from_utf8(out.stdout).unwrap()
}

fn key_file(dir: &std::path::Path, token_uri: &str) -> std::path::PathBuf {
    let key = json!({
        "type": "service_account",
        "project_id": "demo-project",
        "private_key_id": "0123456789abcdef",
        "private_key": rsa_key_pem(),
        "client_email": "agent@demo-project.iam.gserviceaccount.com",
        "client_id": "100000000000000000001",
        "token_uri": token_uri,
    });
    let path = dir.join("key.json");
    std::fs::write(&path, key.to_string()).unwrap();
    path
}

#[test]
fn entries_reach_cloud_logging_with_a_gcp_auth_token_and_the_token_is_never_logged() {
    let token_endpoint = HttpStub::start(|req| {
        if req.path == "/token" && req.method == "POST" {
            Reply::json(
                200,
                json!({"access_token": TOKEN, "expires_in": 3600, "token_type": "Bearer"})
                    .to_string(),
            )
        } else {
            Reply::text(404, "no")
        }
    });
    // The first write fails (5xx): the sink must back off and deliver the batch later.
    let logging = HttpStub::start(|req| {
        if req.path == "/v2/entries:write" {
            Reply::json(503, "{\"error\":{\"code\":503,\"message\":\"try later\"}}")
        } else {
            Reply::text(404, "no")
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path(), &format!("{}/token", token_endpoint.url()));

    let out = LogOutput::capturing();
    // The production filter: our events at info, libraries' only when they matter.
    let subscriber = tracing_subscriber::registry().with(
        AgentLogLayer::new(out.clone())
            .with_filter(service_proxy_agent::publish::log::default_filter()),
    );
    let _guard = tracing::subscriber::set_default(subscriber);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (tx, rx) = tokio::sync::mpsc::channel(cloud_logging::QUEUE_CAPACITY);
        out.attach_cloud(tx);
        let target = Target {
            endpoint: logging.url(),
            project_id: "demo-project".into(),
            zone: "us-central1-a".into(),
            instance_id: "4242".into(),
        };
        let sink = cloud_logging::spawn(target, GcpAuthTokens::with_key_file(&key), rx).unwrap();
        tracing::info!(target: "service_proxy_agent", "Envoy Version: abc/1.40.0/Clean/RELEASE/BoringSSL");
        tracing::error!(target: "service_proxy_agent", finding = "MESH_CONFIG_NOT_FOUND", detail = "network \"wrong\" vs VM network \"default\"", "finding raised");
        tracing::info!(target: "service_proxy_agent", event = "state", health = "FAILING", findings = "MESH_CONFIG_NOT_FOUND", "state");

        // First attempt fails, then recovers.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while logging.requests().is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        logging.set_handler(|_| Reply::json(200, "{}"));
        while sink.counters.entries_sent.load(std::sync::atomic::Ordering::Relaxed) < 3
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(sink.counters.entries_sent.load(std::sync::atomic::Ordering::Relaxed), 3);
        assert!(sink.counters.requests_failed.load(std::sync::atomic::Ordering::Relaxed) >= 1);
        sink.shutdown(Duration::from_secs(1)).await;
    });

    // The token endpoint got a JWT-bearer grant (gcp_auth's real flow).
    let token_reqs = token_endpoint.requests();
    assert!(!token_reqs.is_empty(), "gcp_auth never asked for a token");
    assert!(
        token_reqs[0].body_text().contains("grant_type=urn"),
        "{}",
        token_reqs[0].body_text()
    );

    let writes = logging.requests();
    let last = writes.last().unwrap();
    assert_eq!(
        last.header("authorization"),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    let body: Value = serde_json::from_slice(&last.body).unwrap();
    assert_eq!(
        body["logName"],
        "projects/demo-project/logs/service-proxy-agent"
    );
    assert_eq!(body["resource"]["type"], "gce_instance");
    assert_eq!(
        body["resource"]["labels"],
        json!({"project_id": "demo-project", "zone": "us-central1-a", "instance_id": "4242"})
    );
    let entries = body["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 3, "{body}");
    assert_eq!(entries[0]["severity"], "INFO");
    assert_eq!(
        entries[0]["jsonPayload"]["message"],
        "Envoy Version: abc/1.40.0/Clean/RELEASE/BoringSSL"
    );
    assert!(entries[0]["jsonPayload"]["localTimestamp"].is_string());
    assert_eq!(entries[1]["severity"], "ERROR");
    assert_eq!(
        entries[1]["jsonPayload"]["finding"],
        "MESH_CONFIG_NOT_FOUND"
    );
    assert_eq!(
        entries[1]["labels"],
        json!({"finding": "MESH_CONFIG_NOT_FOUND"})
    );
    assert_eq!(entries[2]["labels"], json!({"health": "FAILING"}));
    assert!(entries[0].get("labels").is_none(), "{body}");

    // Every request, the failed one included, is a WriteLogEntriesRequest as logging.v2's
    // discovery document defines it (unknown fields, types, enums, output-only fields).
    let logging_v2 = Discovery::load("logging.v2.json").expect("logging.v2 discovery document");
    for w in &writes {
        let body: Value = serde_json::from_slice(&w.body).unwrap();
        logging_v2.assert_valid("WriteLogEntriesRequest", &body);
    }
    // The retried batch carries the same insertIds (and timestamps) as the failed attempt, so
    // Cloud Logging keeps one copy of each entry; the entries' IDs differ from each other.
    let first: Value = serde_json::from_slice(&writes[0].body).unwrap();
    let ids = |b: &Value| -> Vec<(String, String)> {
        b["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["insertId"].as_str().unwrap().to_owned(),
                    e["timestamp"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    assert!(writes.len() >= 2, "no retry happened");
    let first_ids = ids(&first);
    assert_eq!(
        first_ids,
        ids(&body)[..first_ids.len()],
        "retry changed insertIds"
    );
    let unique: std::collections::BTreeSet<String> =
        ids(&body).into_iter().map(|(id, _)| id).collect();
    assert_eq!(unique.len(), 3, "{body}");
    // The checker reads the real document: what the API would refuse, it refuses.
    for wrong in [
        json!({"entries": [{"severity": "LOUD"}]}),
        json!({"entries": [{"insertID": "x"}]}),
        json!({"entries": [{"labels": {"finding": 1}}]}),
        json!({"entries": [{"timestamp": "yesterday"}]}),
        json!({"entries": [{"receiveTimestamp": "2026-12-06T00:00:00Z"}]}),
    ] {
        assert!(
            !logging_v2
                .check("WriteLogEntriesRequest", &wrong)
                .is_empty(),
            "{wrong} passed"
        );
    }

    // The failure was logged (locally only) and nothing anywhere carries the token.
    let lines: Vec<String> = out.captured().iter().map(|r| r.to_json_line()).collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("Cloud Logging write failed")),
        "{lines:#?}"
    );
    for l in &lines {
        assert!(
            !l.contains(TOKEN) && !l.contains("test-token"),
            "token leaked: {l}"
        );
    }
    for w in &writes {
        assert!(!w.body_text().contains(TOKEN), "token inside a log entry");
    }
}
