//! Interception findings from real iptables: everything (metadata emulator, xDS stand-in, real
//! Envoy with its interception listener, the `doctor` binary) runs inside a private network
//! namespace whose nat/raw tables each phase programs, then `doctor --interception verify`
//! judges. Nothing touches the host's tables.

use crate::scenarios_common as common;

use std::path::PathBuf;

use common::*;
use service_proxy_agent::finding::FindingId;
use testkit::netns;
use testkit::xds::{ControlPlane, InterceptionSpec, ServiceVip};

/// Replaces the nat and raw tables of this namespace with `rules` (iptables-restore input).
fn program(rules: &str) {
    for t in ["nat", "raw"] {
        netns::iptables(false, &["-t", t, "-F"]).unwrap();
        netns::iptables(false, &["-t", t, "-X"]).unwrap();
    }
    if !rules.trim().is_empty() {
        netns::restore(false, rules).unwrap();
    }
}

#[test]
fn interception_findings_against_real_iptables() {
    netns::in_new_netns(|| {
        let md = vm();
        let p = project();
        let proxy_port = free_port();
        let cp = ControlPlane::start()?;
        cp.set_interception(
            &InterceptionSpec::new(proxy_port, &p)
                .service(ServiceVip::parse("10.0.0.1:80").unwrap())
                .service(ServiceVip::parse("10.0.0.2:80").unwrap())
                .serving_port(8080),
        );
        let mut spec = cp.bootstrap("default", &p);
        spec.interception_port = Some(proxy_port);
        // The serving ports as gcloud writes them (`--serving-ports` on the command line
        // crashes clap in this build: see the report).
        md.set_service_proxy(&format!(
            r#"{{"api-version":"0.2","service":{{"serving-ports":[8080]}},"proxy-spec":{{"proxy-port":{proxy_port},"network":""}}}}"#
        ));
        let envoy = start_envoy(&spec);
        envoy
            .wait_until(WAIT, "interception listener with both VIPs", |e| {
                let l = e.admin_get("/config_dump?resource=dynamic_listeners")?.1;
                Ok(l.contains("10.0.0.1") && l.contains("10.0.0.2"))
            })
            .unwrap();
        let doctor = || {
            Doctor::new(&md.host())
                .envoy(&envoy)
                .control_plane(&cp.addr().to_string())
                .args(&["--interception", "verify"])
                .run()
        };
        let pp = proxy_port.to_string();

        // Nothing redirects: Envoy's interception listener gets no traffic.
        program("");
        let r = doctor();
        contains_all(
            &r.detail("INTERCEPTION_MISSING"),
            &[
                &format!("Envoy listens for intercepted traffic on port {pp}, but no REDIRECT rule exists"),
                "10.0.0.1/32",
                "10.0.0.2/32",
            ],
        );
        r.lacks("SERVICE_NOT_INTERCEPTED");
        contains_all(
            r.group("interception")["note"].as_str().unwrap(),
            &["2 VIPs, 1 serving port"],
        );

        // Everything outbound but loopback redirected, Envoy's own connections included.
        program(&format!(
            "*nat\n\
             -A OUTPUT -d 127.0.0.0/8 -j RETURN\n\
             -A OUTPUT -p tcp -j REDIRECT --to-ports {pp}\n\
             -A PREROUTING -p tcp --dport 8080 -j REDIRECT --to-ports {pp}\n\
             COMMIT\n"
        ));
        let r = doctor();
        contains_all(
            &r.detail("INTERCEPTION_LOOP"),
            &["connections from Envoy (UID 0) are redirected back to Envoy", "no --uid-owner exclusion exists"],
        );
        r.lacks("INTERCEPTION_MISSING");

        // One VIP of two.
        program(&format!(
            "*nat\n\
             :SERVICE_PROXY_OUTPUT - [0:0]\n\
             -A OUTPUT -p tcp -j SERVICE_PROXY_OUTPUT\n\
             -A SERVICE_PROXY_OUTPUT -m owner --uid-owner 0 -j RETURN\n\
             -A SERVICE_PROXY_OUTPUT -d 10.0.0.1/32 -p tcp -j REDIRECT --to-ports {pp}\n\
             -A PREROUTING -p tcp --dport 8080 -j REDIRECT --to-ports {pp}\n\
             COMMIT\n"
        ));
        let r = doctor();
        let d = r.detail("SERVICE_NOT_INTERCEPTED");
        contains_all(&d, &[&format!("VIPs not redirected to port {pp}: 10.0.0.2/32")]);
        assert!(!d.contains("10.0.0.1/32"), "{d}");
        r.lacks("INTERCEPTION_LOOP");
        r.lacks("INBOUND_PORT_NOT_INTERCEPTED");

        // Outbound right, inbound forgotten.
        let outbound = format!(
            ":SERVICE_PROXY_OUTPUT - [0:0]\n\
             -A OUTPUT -p tcp -j SERVICE_PROXY_OUTPUT\n\
             -A SERVICE_PROXY_OUTPUT -m owner --uid-owner 0 -j RETURN\n\
             -A SERVICE_PROXY_OUTPUT -d 10.0.0.1/32 -p tcp -j REDIRECT --to-ports {pp}\n\
             -A SERVICE_PROXY_OUTPUT -d 10.0.0.2/32 -p tcp -j REDIRECT --to-ports {pp}\n"
        );
        program(&format!("*nat\n{outbound}COMMIT\n"));
        let r = doctor();
        contains_all(
            &r.detail("INBOUND_PORT_NOT_INTERCEPTED"),
            &["serving ports with no inbound redirect", "8080"],
        );
        r.lacks("SERVICE_NOT_INTERCEPTED");

        // Redirected, but dropped earlier in raw PREROUTING.
        program(&format!(
            "*raw\n\
             -A PREROUTING -p tcp -m tcp --dport 8080 -j DROP\n\
             COMMIT\n\
             *nat\n{outbound}\
             -A PREROUTING -p tcp --dport 8080 -j REDIRECT --to-ports {pp}\n\
             COMMIT\n"
        ));
        let r = doctor();
        contains_all(
            &r.detail("INBOUND_PORT_BLOCKED"),
            &["port 8080: dropped in raw PREROUTING by `-A PREROUTING -p tcp -m tcp --dport 8080 -j DROP` before the redirect"],
        );
        r.lacks("INBOUND_PORT_NOT_INTERCEPTED");

        // A manual setup like the guide's (ISTIO_* chains) counts as interception.
        program(&format!(
            "*nat\n\
             :ISTIO_IN_REDIRECT - [0:0]\n\
             :ISTIO_OUTPUT - [0:0]\n\
             :ISTIO_REDIRECT - [0:0]\n\
             -A PREROUTING -p tcp --dport 8080 -j ISTIO_IN_REDIRECT\n\
             -A OUTPUT -p tcp -j ISTIO_OUTPUT\n\
             -A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports {pp}\n\
             -A ISTIO_OUTPUT -m owner --uid-owner 0 -j RETURN\n\
             -A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN\n\
             -A ISTIO_OUTPUT -d 10.0.0.1/32 -j ISTIO_REDIRECT\n\
             -A ISTIO_OUTPUT -d 10.0.0.2/32 -j ISTIO_REDIRECT\n\
             -A ISTIO_OUTPUT -j RETURN\n\
             -A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports {pp}\n\
             COMMIT\n"
        ));
        let r = doctor();
        assert!(r.ids().is_empty(), "{:#}", r.json);
        assert_eq!(r.group("interception")["status"], "pass");
        Ok(())
    })
    .expect("a private network namespace (root)");
}

/// iptables missing: the observer's tools point at programs that do not exist (the CLI has no
/// flag for that), so this one runs in-process, against a real Envoy in a private namespace.
#[test]
fn missing_iptables_is_iptables_unavailable() {
    netns::in_new_netns(|| {
        let md = vm();
        let p = project();
        let proxy_port = free_port();
        let cp = ControlPlane::start()?;
        cp.set_interception(
            &InterceptionSpec::new(proxy_port, &p)
                .service(ServiceVip::parse("10.0.0.1:80").unwrap()),
        );
        let mut spec = cp.bootstrap("default", &p);
        spec.interception_port = Some(proxy_port);
        let envoy = start_envoy(&spec);
        envoy
            .wait_until(WAIT, "interception listener", |e| {
                Ok(e.admin_get("/config_dump?resource=dynamic_listeners")?
                    .1
                    .contains("10.0.0.1"))
            })
            .unwrap();
        let dir = envoy.dir().display().to_string();
        let mut ip = InProcess::new(&settings(
            &md.host(),
            &[
                "--envoy-admin",
                &envoy.admin_url(),
                "--envoy-log-dir",
                &dir,
                "--interception",
                "verify",
            ],
        ));
        let missing = PathBuf::from("/nonexistent/sbin/iptables-save");
        ip.observer.iptables.save_v4 = missing.clone();
        ip.observer.iptables.save_v6 = missing;
        let d = ip.diagnose(false);
        let f = d
            .findings
            .iter()
            .find(|f| f.id == FindingId::IptablesUnavailable)
            .unwrap_or_else(|| panic!("{d:#?}"));
        contains_all(&f.detail, &["iptables-save", "is not installed"]);
        contains_all(&f.remediation, &["Install iptables"]);
        Ok(())
    })
    .expect("a private network namespace (root)");
}
