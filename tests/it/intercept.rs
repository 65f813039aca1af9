//! Interception with real iptables and real packets, each test in private network namespaces
//! (testkit::netns), and golden files of the restore text.
//!
//! Envoy (real, run as UID 65534) gets its listeners from a file (`lds_config.path_config_source`),
//! so they are dynamic listeners like the ones Cloud Service Mesh sends: one listener on the
//! proxy port with `use_original_dst` and one filter chain per VIP answering with a direct
//! response that names the VIP. VIPs are routed to a veth whose peer namespace serves the same
//! VIPs with a body saying "peer", so every connection has a positive answer telling who
//! served it.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use ipnet::IpNet;
use serde_json::{Value, json};
use service_proxy_agent::intercept::plan::{self, DesiredInput, TrafficInterception};
use service_proxy_agent::intercept::{FamilyOutcome, InterceptError, Plan, Reconciler};
use service_proxy_agent::observe::iptables::{self as ipt, Family, IptablesError, Tools};
use testkit::envoy::{Envoy, EnvoyConfig, http_get, minimal_bootstrap};
use testkit::netns::{self, Lab};

const ENVOY_UID: u32 = 65534;
const PROXY_PORT: u16 = 15001;

// ---------------------------------------------------------------------------------------------
// Helpers.

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn hcm(body: &str) -> Value {
    json!({
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "t",
            "route_config": {"name": "r", "virtual_hosts": [{
                "name": "all", "domains": ["*"],
                "routes": [{"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": body}}}]
            }]},
            "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]
        }
    })
}

/// The interception listeners: one per family with VIPs (plus inbound chains on v4).
fn lds(vips: &[IpNet], inbound_ports: &[u16], version: u32) -> Value {
    let mut resources = Vec::new();
    for (name, any, fam) in [
        (
            "TRAFFICDIRECTOR_INTERCEPTION_LISTENER",
            "0.0.0.0",
            Family::V4,
        ),
        ("INTERCEPTION_LISTENER_V6", "::", Family::V6),
    ] {
        let mut chains: Vec<Value> = vips
            .iter()
            .filter(|v| Family::of_net(v) == fam)
            .map(|v| {
                json!({
                    "filter_chain_match": {
                        "prefix_ranges": [{"address_prefix": v.addr().to_string(), "prefix_len": v.prefix_len()}],
                        "destination_port": 80
                    },
                    "filters": [hcm(&format!("envoy {}", v.addr()))]
                })
            })
            .collect();
        if fam == Family::V4 {
            for p in inbound_ports {
                chains.push(json!({
                    "filter_chain_match": {"destination_port": p},
                    "filters": [hcm(&format!("envoy inbound {p}"))]
                }));
            }
        }
        if chains.is_empty() {
            continue;
        }
        resources.push(json!({
            "@type": "type.googleapis.com/envoy.config.listener.v3.Listener",
            "name": name,
            "address": {"socket_address": {"address": any, "port_value": PROXY_PORT}},
            "use_original_dst": true,
            "filter_chains": chains,
        }));
    }
    json!({"version_info": version.to_string(), "resources": resources})
}

/// Envoy with file-based LDS in `dir`; rewrite with [`write_lds`].
struct Mesh {
    envoy: Envoy,
    dir: PathBuf,
    _tmp: tempfile::TempDir,
    version: u32,
}

fn write_lds(dir: &Path, value: &Value) {
    let tmp = dir.join("lds.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(value).unwrap()).unwrap();
    std::fs::rename(&tmp, dir.join("lds.json")).unwrap();
}

impl Mesh {
    fn start(vips: &[IpNet], inbound: &[u16]) -> anyhow::Result<Mesh> {
        let tmp = tempfile::Builder::new().prefix("spa-mesh-").tempdir()?;
        let dir = tmp.path().to_path_buf();
        write_lds(&dir, &lds(vips, inbound, 1));
        let mut bootstrap = minimal_bootstrap("projects/1/networks/default/nodes/t", json!({}));
        bootstrap["dynamic_resources"] = json!({"lds_config": {
            "resource_api_version": "V3",
            "path_config_source": {
                "path": dir.join("lds.json"),
                "watched_directory": {"path": dir}
            }
        }});
        let mut cfg = EnvoyConfig::new(bootstrap);
        cfg.run_as = Some((ENVOY_UID, ENVOY_UID));
        cfg.work_dir = Some(dir.clone());
        let envoy = Envoy::start(cfg)?;
        let mesh = Mesh {
            envoy,
            dir,
            _tmp: tmp,
            version: 1,
        };
        mesh.wait_vips(vips)?;
        Ok(mesh)
    }

    fn set(&mut self, vips: &[IpNet], inbound: &[u16]) -> anyhow::Result<()> {
        self.version += 1;
        write_lds(&self.dir, &lds(vips, inbound, self.version));
        self.wait_vips(vips)
    }

    /// Waits until Envoy's active listeners are exactly the ones last written.
    fn wait_vips(&self, vips: &[IpNet]) -> anyhow::Result<()> {
        let want: BTreeSet<IpNet> = vips.iter().copied().collect();
        let lds: Value = serde_json::from_slice(&std::fs::read(self.dir.join("lds.json"))?)?;
        let listeners = lds["resources"].as_array().map_or(0, Vec::len);
        self.envoy
            .wait_until(Duration::from_secs(20), "listeners with the VIPs", |e| {
                Ok(active_listener_count(e) == listeners
                    && listener_vips(e)
                        .map(|v| v.into_iter().collect::<BTreeSet<_>>() == want)
                        .unwrap_or(false))
            })
    }

    fn vips(&self) -> Vec<IpNet> {
        listener_vips(&self.envoy).unwrap()
    }
}

/// The VIPs of Envoy's dynamic listeners, read from the admin's config dump (what the agent's
/// admin client does, reduced to what these tests need).
fn listener_vips(envoy: &Envoy) -> anyhow::Result<Vec<IpNet>> {
    let (status, body) = envoy.admin_get("/config_dump?resource=dynamic_listeners")?;
    if status != 200 {
        bail!("config_dump: {status}");
    }
    let dump: Value = serde_json::from_str(&body)?;
    let mut out = Vec::new();
    for l in dump["configs"].as_array().into_iter().flatten() {
        for fc in l["active_state"]["listener"]["filter_chains"]
            .as_array()
            .into_iter()
            .flatten()
        {
            for pr in fc["filter_chain_match"]["prefix_ranges"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let addr: IpAddr = pr["address_prefix"].as_str().context("prefix")?.parse()?;
                let len = pr["prefix_len"].as_u64().unwrap_or(0) as u8;
                out.push(IpNet::new(addr, len)?);
            }
        }
    }
    Ok(out)
}

fn active_listener_count(envoy: &Envoy) -> usize {
    let Ok((200, body)) = envoy.admin_get("/config_dump?resource=dynamic_listeners") else {
        return usize::MAX;
    };
    let dump: Value = serde_json::from_str(&body).unwrap_or_default();
    dump["configs"].as_array().map_or(0, |a| {
        a.iter().filter(|l| l["active_state"].is_object()).count()
    })
}

fn desired(vips: &[IpNet], ports: &[u16]) -> Plan {
    plan::plan(&desired_input(vips, ports)).unwrap()
}

fn desired_input(vips: &[IpNet], ports: &[u16]) -> DesiredInput {
    DesiredInput {
        vips: vips.to_vec(),
        serving_ports: ports.to_vec(),
        envoy_uid: ENVOY_UID,
        proxy_port: PROXY_PORT,
        traffic: TrafficInterception::default(),
    }
}

/// The body served at `ip:80`, or the error.
fn get(ip: IpAddr, port: u16) -> anyhow::Result<String> {
    let (status, body) = http_get(SocketAddr::new(ip, port), "/")?;
    if status != 200 {
        bail!("status {status}");
    }
    Ok(body)
}

/// The body `curl` gets for `http://ip/` when run as `uid`.
fn get_as(uid: u32, ip: IpAddr) -> anyhow::Result<String> {
    let url = match ip {
        IpAddr::V4(a) => format!("http://{a}/"),
        IpAddr::V6(a) => format!("http://[{a}]/"),
    };
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "5", &url]);
    std::os::unix::process::CommandExt::uid(&mut cmd, uid);
    std::os::unix::process::CommandExt::gid(&mut cmd, uid);
    netns::run(&mut cmd)
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn must_change(out: &FamilyOutcome) {
    assert!(out.changed(), "expected a change, got {out}");
}

// ---------------------------------------------------------------------------------------------
// Real packets.

#[test]
fn outbound_vips_follow_envoy_listeners_and_envoy_uid_is_not_redirected() {
    netns::in_new_netns(|| {
        let lab = Lab::new()?;
        let (vip1, vip2) = (net("10.200.0.1/32"), net("10.200.0.2/32"));
        lab.route_to_peer("10.200.0.0/24")?;
        let _p1 = lab.serve_on_peer(vip1.addr(), 80, "peer 10.200.0.1")?;
        let _p2 = lab.serve_on_peer(vip2.addr(), 80, "peer 10.200.0.2")?;
        let mut mesh = Mesh::start(&[vip1], &[])?;
        let rt = runtime();
        let mut rec = Reconciler::new(Tools::system());

        // Before any rule: the VIP is served by the peer, not Envoy.
        assert_eq!(get(vip1.addr(), 80)?, "peer 10.200.0.1");

        let report = rt.block_on(rec.reconcile(&desired(&mesh.vips(), &[])));
        must_change(&report.v4);
        assert_eq!((report.saves, report.restores), (2, 1), "{report:?}");
        assert_eq!(get(vip1.addr(), 80)?, "envoy 10.200.0.1");

        // Steady state: one save (IPv4; IPv6 is known clean), no restore.
        let steady = rt.block_on(rec.reconcile(&desired(&mesh.vips(), &[])));
        assert_eq!((steady.saves, steady.restores), (1, 0), "{steady:?}");
        assert!(matches!(steady.v4, FamilyOutcome::Unchanged { .. }));
        assert_eq!(steady.v6, FamilyOutcome::Skipped);

        // Envoy's own UID bypasses interception and reaches the real VIP.
        assert_eq!(get_as(ENVOY_UID, vip1.addr())?, "peer 10.200.0.1");
        // Another unprivileged UID is intercepted.
        assert_eq!(get_as(65533, vip1.addr())?, "envoy 10.200.0.1");

        // A VIP added is intercepted after the next reconcile...
        mesh.set(&[vip1, vip2], &[])?;
        assert_eq!(get(vip2.addr(), 80)?, "peer 10.200.0.2");
        must_change(&rt.block_on(rec.reconcile(&desired(&mesh.vips(), &[]))).v4);
        assert_eq!(get(vip2.addr(), 80)?, "envoy 10.200.0.2");
        // ... and a removed one released.
        mesh.set(&[vip2], &[])?;
        must_change(&rt.block_on(rec.reconcile(&desired(&mesh.vips(), &[]))).v4);
        assert_eq!(get(vip1.addr(), 80)?, "peer 10.200.0.1");
        assert_eq!(get(vip2.addr(), 80)?, "envoy 10.200.0.2");
        Ok(())
    })
    .unwrap();
}

#[test]
fn inbound_serving_port_from_peer_is_redirected_to_envoy() {
    netns::in_new_netns(|| {
        let lab = Lab::new()?;
        let _mesh = Mesh::start(&[], &[8080])?;
        let local = IpAddr::V4(lab.local_v4);
        // Nothing listens on 8080: refused before the rules exist.
        let before = lab
            .peer
            .run(move || Ok(get(local, 8080).map_err(|e| e.to_string())))?;
        assert!(before.is_err(), "{before:?}");

        let rt = runtime();
        let mut rec = Reconciler::new(Tools::system());
        must_change(&rt.block_on(rec.reconcile(&desired(&[], &[8080]))).v4);
        let after = lab.peer.run(move || get(local, 8080))?;
        assert_eq!(after, "envoy inbound 8080");
        // A port that is not a serving port is left alone.
        let other = lab.peer.run(move || Ok(get(local, 8081).is_err()))?;
        assert!(other, "8081 must not be redirected");
        Ok(())
    })
    .unwrap();
}

#[test]
fn ipv6_vip_gets_ip6tables_rules_and_is_intercepted() {
    netns::in_new_netns(|| {
        let lab = Lab::new()?;
        let (vip4, vip6) = (net("10.200.0.1/32"), net("fd00:200::1/128"));
        lab.route_to_peer("10.200.0.0/24")?;
        lab.route_to_peer("fd00:200::/64")?;
        let _p4 = lab.serve_on_peer(vip4.addr(), 80, "peer 10.200.0.1")?;
        let _p6 = lab.serve_on_peer(vip6.addr(), 80, "peer fd00:200::1")?;
        let mut mesh = Mesh::start(&[vip4, vip6], &[])?;
        assert_eq!(get(vip6.addr(), 80)?, "peer fd00:200::1");

        let rt = runtime();
        let mut rec = Reconciler::new(Tools::system());
        let r = rt.block_on(rec.reconcile(&desired(&mesh.vips(), &[])));
        must_change(&r.v4);
        must_change(&r.v6);
        assert_eq!(get(vip6.addr(), 80)?, "envoy fd00:200::1");
        assert_eq!(get(vip4.addr(), 80)?, "envoy 10.200.0.1");
        assert_eq!(get_as(ENVOY_UID, vip6.addr())?, "peer fd00:200::1");
        let saved6 = netns::save(true, Some("nat"))?;
        assert!(
            saved6.contains("-A SERVICE_PROXY_OUTPUT -d ::1/128 -j RETURN"),
            "{saved6}"
        );
        assert!(!netns::save(false, Some("nat"))?.contains("fd00"));

        // Steady state with IPv6 in use: one save per family, no restore.
        let steady = rt.block_on(rec.reconcile(&desired(&mesh.vips(), &[])));
        assert_eq!((steady.saves, steady.restores), (2, 0), "{steady:?}");

        // The IPv6 VIP goes away: ip6tables is emptied of our chains, then left alone.
        mesh.set(&[vip4], &[])?;
        let r = rt.block_on(rec.reconcile(&desired(&mesh.vips(), &[])));
        must_change(&r.v6);
        assert!(!r.v4.changed());
        assert!(!netns::save(true, Some("nat"))?.contains("SERVICE_PROXY"));
        assert_eq!(get(vip6.addr(), 80)?, "peer fd00:200::1");
        let steady = rt.block_on(rec.reconcile(&desired(&mesh.vips(), &[])));
        assert_eq!((steady.saves, steady.restores), (1, 0), "{steady:?}");
        Ok(())
    })
    .unwrap();
}

// ---------------------------------------------------------------------------------------------
// Ownership, repair, refusal (real iptables, no traffic needed).

/// The guide's manual ISTIO_* setup, completed with the ISTIO_REDIRECT rule the real
/// istio-iptables script writes, plus a user's own chain.
const FOREIGN: &str = "*nat
:ISTIO_IN_REDIRECT - [0:0]
:ISTIO_OUTPUT - [0:0]
:ISTIO_REDIRECT - [0:0]
:MINE - [0:0]
-A OUTPUT -p tcp -j ISTIO_OUTPUT
-A PREROUTING -p tcp -m tcp --dport 9000 -j MINE
-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A ISTIO_OUTPUT -m owner --uid-owner 1006 -j RETURN
-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
-A ISTIO_OUTPUT -d 10.0.0.1/32 -j ISTIO_REDIRECT
-A ISTIO_OUTPUT -j RETURN
-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A MINE -s 192.168.0.0/16 -j RETURN
COMMIT
";

/// Everything in the nat table that is not ours, as (chain, rule texts).
fn foreign_state(v6: bool) -> Vec<(String, Vec<String>)> {
    let rs = ipt::parse_save(&netns::save(v6, Some("nat")).unwrap());
    let nat = rs.table("nat").unwrap();
    nat.chains
        .iter()
        .filter(|c| !c.name.starts_with("SERVICE_PROXY_"))
        .map(|c| {
            (
                c.name.clone(),
                c.rules
                    .iter()
                    .filter(|r| !r.text.contains("SERVICE_PROXY_"))
                    .map(|r| r.text.clone())
                    .collect(),
            )
        })
        .collect()
}

fn ours_count(v6: bool) -> usize {
    netns::save(v6, Some("nat"))
        .unwrap()
        .lines()
        .filter(|l| l.contains("SERVICE_PROXY_"))
        .count()
}

#[test]
fn foreign_chains_survive_apply_and_clear_and_damage_is_repaired() {
    netns::in_new_netns(|| {
        netns::restore(false, FOREIGN)?;
        let foreign = foreign_state(false);
        assert_eq!(
            foreign
                .iter()
                .find(|(c, _)| c == "ISTIO_OUTPUT")
                .unwrap()
                .1
                .len(),
            4
        );
        let rt = runtime();
        let mut rec = Reconciler::new(Tools::system());
        let plan = desired(&[net("10.0.0.1/32"), net("10.7.240.0/20")], &[80, 8080]);

        let r = rt.block_on(rec.reconcile(&plan));
        must_change(&r.v4);
        assert_eq!(foreign_state(false), foreign);
        assert_eq!(
            ours_count(false),
            plan.v4.rule_count() + plan.v4.chains.len()
        );
        let preview = rt.block_on(rec.preview(&plan));
        assert!(
            preview.iter().all(|(_, r)| matches!(r, Ok(None))),
            "{preview:?}"
        );

        // Someone flushes our chain and adds a second jump: the next poll repairs both.
        netns::iptables(false, &["-t", "nat", "-F", "SERVICE_PROXY_SERVICE_CIDRS"])?;
        netns::iptables(
            false,
            &[
                "-t",
                "nat",
                "-A",
                "OUTPUT",
                "-p",
                "tcp",
                "-j",
                "SERVICE_PROXY_OUTPUT",
            ],
        )?;
        let r = rt.block_on(rec.reconcile(&plan));
        match &r.v4 {
            FamilyOutcome::Changed { transaction, .. } => {
                assert_eq!((transaction.deleted_jumps, transaction.added_jumps), (1, 0));
            }
            other => panic!("expected a repair, got {other}"),
        }
        let saved = netns::save(false, Some("nat"))?;
        assert_eq!(
            saved
                .matches("-A OUTPUT -p tcp -j SERVICE_PROXY_OUTPUT")
                .count(),
            1
        );
        assert!(
            saved.contains(
                "-A SERVICE_PROXY_SERVICE_CIDRS -d 10.7.240.0/20 -j SERVICE_PROXY_REDIRECT"
            )
        );
        assert_eq!(foreign_state(false), foreign);

        // Steady state: one save, no restore.
        let before = rec.totals();
        let r = rt.block_on(rec.reconcile(&plan));
        assert_eq!((r.saves, r.restores), (1, 0), "{r:?}");
        assert_eq!(rec.totals().restores, before.restores);

        // Clear removes ours and nothing else; a second clear has nothing to do.
        let c = rt.block_on(rec.clear());
        must_change(&c.v4);
        assert_eq!(ours_count(false), 0);
        assert_eq!(foreign_state(false), foreign);
        let c = rt.block_on(rec.clear());
        assert_eq!(c.restores, 0, "{c:?}");
        Ok(())
    })
    .unwrap();
}

#[test]
fn clear_removes_ipv6_chains_too() {
    netns::in_new_netns(|| {
        let rt = runtime();
        let mut rec = Reconciler::new(Tools::system());
        let plan = desired(&[net("fd00:200::1/128")], &[80]);
        let r = rt.block_on(rec.reconcile(&plan));
        assert!(r.is_ok(), "{r:?}");
        assert!(ours_count(true) > 0 && ours_count(false) > 0);
        // A fresh reconciler (an agent restart) with no IPv6 VIP removes the stale IPv6 chains.
        let mut fresh = Reconciler::new(Tools::system());
        let r = rt.block_on(fresh.reconcile(&desired(&[], &[80])));
        must_change(&r.v6);
        assert_eq!(ours_count(true), 0);
        rt.block_on(fresh.reconcile(&plan));
        let c = rt.block_on(fresh.clear());
        assert!(c.is_ok() && c.v4.changed() && c.v6.changed(), "{c:?}");
        assert_eq!(ours_count(true) + ours_count(false), 0);
        Ok(())
    })
    .unwrap();
}

#[test]
fn refused_restore_leaves_previous_rules_and_carries_iptables_message() {
    netns::in_new_netns(|| {
        let rt = runtime();
        let mut rec = Reconciler::new(Tools::system());
        assert!(
            rt.block_on(rec.reconcile(&desired(&[net("10.0.0.1/32")], &[])))
                .is_ok()
        );
        let before = netns::save(false, Some("nat"))?;

        // A user's chain jumps into one of ours: deleting ours (clear) is refused by the kernel,
        // so the whole transaction (which also deletes the other chains and the jumps) is.
        netns::restore(
            false,
            "*nat\n:MINE - [0:0]\n-A MINE -j SERVICE_PROXY_REDIRECT\nCOMMIT\n",
        )?;
        let with_stale = netns::save(false, Some("nat"))?;
        let r = rt.block_on(rec.clear());
        let err = r.v4.error().expect("the restore must be refused");
        assert!(
            matches!(
                err,
                InterceptError::Restore {
                    family: Family::V4,
                    ..
                }
            ),
            "{err}"
        );
        let msg = err.iptables_message().unwrap();
        assert!(!msg.is_empty() && msg.len() <= ipt::MESSAGE_MAX, "{msg}");
        eprintln!("iptables refused with: {err}");
        let after = netns::save(false, Some("nat"))?;
        let strip = |s: &str| {
            s.lines()
                .filter(|l| !l.starts_with('#'))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(strip(&after), strip(&with_stale));
        assert!(after.contains("-d 10.0.0.1/32 -j SERVICE_PROXY_REDIRECT"));
        assert!(strip(&before).lines().all(|l| after.contains(l)));
        assert_eq!(rec.totals().failed_restores, 1);
        Ok(())
    })
    .unwrap();
}

#[test]
fn missing_binaries_are_errors_that_change_nothing() {
    netns::in_new_netns(|| {
        let rt = runtime();
        let plan = desired(&[net("10.0.0.1/32")], &[]);
        let mut tools = Tools::system();
        tools.restore_v4 = "/nonexistent/iptables-restore".into();
        let mut rec = Reconciler::new(tools.clone());
        let r = rt.block_on(rec.reconcile(&plan));
        match r.v4.error() {
            Some(InterceptError::Restore {
                source: IptablesError::Missing { .. },
                ..
            }) => {}
            other => panic!("expected a missing restore binary, got {other:?}"),
        }
        assert_eq!(ours_count(false), 0);

        tools.save_v4 = "/nonexistent/iptables-save".into();
        let mut rec = Reconciler::new(tools);
        let r = rt.block_on(rec.reconcile(&plan));
        assert!(
            matches!(
                r.v4.error(),
                Some(InterceptError::Save {
                    source: IptablesError::Missing { .. },
                    ..
                })
            ),
            "{r:?}"
        );
        assert_eq!(r.restores, 0);
        Ok(())
    })
    .unwrap();
}

// ---------------------------------------------------------------------------------------------
// Golden files of the restore text (pure). `UPDATE_GOLDEN=1 cargo test --test it intercept::golden`
// rewrites them; review the diff.

fn golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/intercept")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 creates it)", path.display()));
    assert_eq!(actual, expected, "{} differs", path.display());
}

fn golden_input() -> DesiredInput {
    DesiredInput {
        vips: [
            "10.7.240.20/20",
            "10.0.0.1/32",
            "fd00:10::1/128",
            "10.0.0.1/32",
        ]
        .iter()
        .map(|v| net(v))
        .collect(),
        serving_ports: vec![8080, 80],
        envoy_uid: 1006,
        proxy_port: 15001,
        traffic: TrafficInterception::default(),
    }
}

#[test]
fn golden_restore_text_for_a_clean_table() {
    let mut input = golden_input();
    input.vips.retain(|v| Family::of_net(v) == Family::V4);
    let p = plan::plan(&input).unwrap();
    assert!(!p.v6.is_active());
    golden("basic_v4.restore", &p.v4.restore_text().unwrap());

    let p = plan::plan(&golden_input()).unwrap();
    golden("dual_v4.restore", &p.v4.restore_text().unwrap());
    golden("dual_v6.restore", &p.v6.restore_text().unwrap());
}

#[test]
fn golden_restore_text_intercept_all_outbound() {
    let mut input = golden_input();
    input.traffic = TrafficInterception {
        intercept_all_outbound: true,
        exclude_outbound_ip_ranges: vec![
            "169.254.169.254/32".into(),
            "10.128.0.0/9".into(),
            "fd00:99::/64".into(),
            "not-a-range".into(),
        ],
        exclude_outbound_port_ranges: vec![
            "22".into(),
            "3306".into(),
            "8000-8100".into(),
            "x".into(),
        ],
    };
    let p = plan::plan(&input).unwrap();
    golden("intercept_all_v4.restore", &p.v4.restore_text().unwrap());
    golden("intercept_all_v6.restore", &p.v6.restore_text().unwrap());
    let ignored: Vec<&str> = p.ignored.iter().map(|i| i.value.as_str()).collect();
    assert_eq!(ignored, vec!["not-a-range", "x"]);
}

#[test]
fn golden_repair_transaction_against_a_real_damaged_table() {
    // repair_state.save: real iptables-save output (see tests/fixtures/iptables/capture.sh) of
    // our chains with a duplicate jump, a flushed chain, a stale chain, and ISTIO_* rules.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let saved = std::fs::read_to_string(dir.join("iptables/repair_state.save")).unwrap();
    let rs = ipt::parse_save(&saved);
    assert!(rs.unparsed.is_empty(), "{:?}", rs.unparsed);
    let mut input = golden_input();
    input.vips.retain(|v| Family::of_net(v) == Family::V4);
    let p = plan::plan(&input).unwrap();
    let t = plan::transaction(&p.v4, rs.table("nat"), 0)
        .unwrap()
        .unwrap();
    golden("repair_v4.restore", &t.text);
    assert!(!t.text.contains("ISTIO"));
    let c = plan::clear_transaction(rs.table("nat")).unwrap().unwrap();
    golden("clear_v4.restore", &c.text);
}

#[test]
fn damaged_state_from_an_older_agent_is_repaired_in_one_transaction() {
    netns::in_new_netns(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/iptables");
        netns::restore(
            false,
            &std::fs::read_to_string(dir.join("repair_state.rules"))?,
        )?;
        let foreign = foreign_state(false);
        let mut input = golden_input();
        input.vips.retain(|v| Family::of_net(v) == Family::V4);
        let p = plan::plan(&input).unwrap();
        let rt = runtime();
        let mut rec = Reconciler::new(Tools::system());
        let r = rt.block_on(rec.reconcile(&p));
        assert_eq!(r.restores, 1, "{r:?}");
        match &r.v4 {
            FamilyOutcome::Changed { transaction, .. } => {
                // SERVICE_PROXY_LEGACY is not one of docs/contract.md#7-interception's chains: not ours, left alone
                // with the jump into it (docs/contract.md#11-trust).
                assert!(transaction.removed_chains.is_empty(), "{transaction:?}");
                assert_eq!((transaction.deleted_jumps, transaction.added_jumps), (1, 0));
            }
            other => panic!("{other}"),
        }
        assert_eq!(foreign_state(false), foreign);
        let saved = netns::save(false, Some("nat"))?;
        assert!(saved.contains(":SERVICE_PROXY_LEGACY"), "{saved}");
        assert!(saved.contains("-j SERVICE_PROXY_LEGACY"), "{saved}");
        let preview = rt.block_on(rec.preview(&p));
        assert!(
            preview.iter().all(|(_, r)| matches!(r, Ok(None))),
            "{preview:?}"
        );
        Ok(())
    })
    .unwrap();
}

// ---------------------------------------------------------------------------------------------
// The namespace harness itself.

fn host_links() -> String {
    // Read-only look at the host namespace, to show the tests leave it alone.
    netns::run(Command::new("ip").args(["-o", "link", "show"])).unwrap()
}

#[test]
fn netns_harness_is_private_and_refuses_the_host_namespace() {
    assert!(!netns::in_private_netns());
    let e = netns::ip(&["link", "add", "spa-x", "type", "dummy"]).unwrap_err();
    assert!(e.to_string().contains("host's network namespace"), "{e}");
    assert!(netns::restore(false, "*nat\nCOMMIT\n").is_err());
    assert!(netns::iptables(false, &["-t", "nat", "-F"]).is_err());
    let before = host_links();
    netns::in_new_netns(|| {
        assert!(netns::in_private_netns());
        let links = netns::ip(&["-o", "link", "show"])?;
        assert_eq!(links.lines().count(), 1, "{links}");
        assert!(links.contains("lo:") && links.contains("UP"), "{links}");
        let lab = Lab::new()?;
        let peer_v4 = lab.peer_v4;
        // Reachable over the veth, both ways.
        let _srv = netns::serve_http_in(&lab.peer, SocketAddr::new(peer_v4.into(), 8000), "hi")?;
        assert_eq!(get(peer_v4.into(), 8000)?, "hi");
        let local = lab.local_v4;
        let srv = std::net::TcpListener::bind((local, 8001))?;
        let client = lab.peer.spawn_thread(move || {
            Ok(std::net::TcpStream::connect_timeout(
                &SocketAddr::new(local.into(), 8001),
                Duration::from_secs(2),
            )
            .is_ok())
        })?;
        assert!(client.join().unwrap()?);
        drop(srv);
        // Commands run in the peer through nsenter see its interfaces only.
        let peer_links = lab.peer.ip(&["-o", "link", "show"])?;
        assert!(
            peer_links.contains("spa1") && !peer_links.contains("spa0"),
            "{peer_links}"
        );
        Ok(())
    })
    .unwrap();
    assert_eq!(host_links(), before);
}

#[test]
fn netns_without_root_fails_saying_so() {
    if std::env::var_os("SPA_NETNS_UNPRIVILEGED").is_some() {
        let e = netns::in_new_netns(|| Ok(())).unwrap_err();
        assert!(e.to_string().contains("these tests need root"), "{e}");
        let e = netns::Peer::spawn()
            .err()
            .expect("unshare -n must fail without root");
        assert!(e.to_string().contains("needs root"), "{e}");
        return;
    }
    let exe = testkit::exec::reachable_by_all(&std::env::current_exe().unwrap()).unwrap();
    let mut cmd = Command::new(exe);
    cmd.args([
        "intercept::netns_without_root_fails_saying_so",
        "--exact",
        "--test-threads=1",
    ])
    .env("SPA_NETNS_UNPRIVILEGED", "1");
    std::os::unix::process::CommandExt::uid(&mut cmd, 65534);
    std::os::unix::process::CommandExt::gid(&mut cmd, 65534);
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "unprivileged re-run failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Someone else deletes our rule for `vip` (in the current namespace).
fn delete_our_rule_for(vip: &str) -> anyhow::Result<()> {
    netns::iptables(
        false,
        &[
            "-t",
            "nat",
            "-D",
            "SERVICE_PROXY_SERVICE_CIDRS",
            "-d",
            vip,
            "-j",
            "SERVICE_PROXY_REDIRECT",
        ],
    )?;
    Ok(())
}

/// nf_tables' ruleset generation stands for the whole ruleset: while it stands still a poll
/// runs no save, and any change by anyone — to our chains, to another table — is seen by the
/// next poll and repaired.
#[test]
fn steady_polls_skip_the_save_until_anything_changes() {
    use service_proxy_agent::observe::iptables::SaveCache;
    use service_proxy_agent::observe::nf_generation;
    netns::in_new_netns(|| {
        let before = nf_generation::current().context("reading nf_tables' generation")?;
        let rt = runtime();
        let mut rec = Reconciler::new(Tools::system());
        let plan = desired(&[net("10.0.0.1/32"), net("10.7.240.0/20")], &[80]);
        must_change(&rt.block_on(rec.reconcile(&plan)).v4);
        let after = nf_generation::current()?;
        assert_ne!(before, after, "a restore did not move the generation");

        // First poll after the apply: one save, equal by text; then no save at all.
        let r = rt.block_on(rec.reconcile(&plan));
        assert!(matches!(r.v4, FamilyOutcome::Unchanged { .. }), "{r:?}");
        assert_eq!(r.saves, 1);
        for _ in 0..3 {
            let r = rt.block_on(rec.reconcile(&plan));
            assert!(matches!(r.v4, FamilyOutcome::Unchanged { .. }), "{r:?}");
            assert_eq!((r.saves, r.restores), (0, 0), "{r:?}");
        }
        assert_eq!(rec.totals().unchanged_by_generation, 3);

        // Someone deletes one of our rules: the generation moves, the poll saves and repairs.
        delete_our_rule_for("10.0.0.1/32")?;
        let r = rt.block_on(rec.reconcile(&plan));
        must_change(&r.v4);
        assert!(
            netns::save(false, Some("nat"))?.contains("-d 10.0.0.1/32 -j SERVICE_PROXY_REDIRECT")
        );

        // A change of plan is never answered from the generation.
        rt.block_on(rec.reconcile(&plan));
        let other = rec.plan(desired_input(&[net("10.0.0.1/32")], &[80]))?;
        assert_eq!(*other, desired(&[net("10.0.0.1/32")], &[80]));
        must_change(&rt.block_on(rec.reconcile(&other)).v4);

        // The daemon's read of every table: reused while nothing changes, fresh after a
        // change in a table that is not ours.
        let cache = SaveCache::default();
        let tools = Tools::system();
        let first = rt.block_on(cache.save(&tools, Family::V4))?;
        let again = rt.block_on(cache.save(&tools, Family::V4))?;
        assert_eq!(cache.reused(), 1);
        assert_eq!(first, again);
        netns::iptables(
            false,
            &[
                "-t", "filter", "-A", "INPUT", "-p", "tcp", "--dport", "9", "-j", "DROP",
            ],
        )?;
        let changed = rt.block_on(cache.save(&tools, Family::V4))?;
        assert_eq!(
            cache.reused(),
            1,
            "a changed ruleset was answered from the cache"
        );
        let filter = changed.table("filter").context("no filter table")?;
        assert!(
            filter
                .chain("INPUT")
                .is_some_and(|c| c.rules.iter().any(|r| r.text().contains("--dport 9"))),
            "{changed:?}"
        );
        Ok(())
    })
    .unwrap();
}

/// The daemon's path: it asks the reconciler for the plan (the same one while the input stands
/// still) and hands it its own read of the tables (the save cache's, shared while the
/// generation stands still). The same read found in step before is not compared again; a
/// fresh read after anyone's change is, and a change to our rules is repaired; a new plan is
/// compared whatever the read.
#[test]
fn the_daemons_shared_read_is_compared_once_while_it_stands() {
    use service_proxy_agent::observe::iptables::SaveCache;
    use std::sync::Arc;
    netns::in_new_netns(|| {
        let rt = runtime();
        let tools = Tools::system();
        let cache = SaveCache::default();
        let mut rec = Reconciler::new(tools.clone());
        let input = desired_input(&[net("10.0.0.1/32"), net("10.7.240.0/20")], &[80]);
        let plan = rec.plan(input.clone())?;
        let read = || rt.block_on(cache.save(&tools, Family::V4));
        let first = read()?;
        must_change(
            &rt.block_on(rec.reconcile_with(&plan, Some(&first), None))
                .v4,
        );

        // The read after the apply: compared once (in step), then the same read is not.
        let after = read()?;
        let r = rt.block_on(rec.reconcile_with(&plan, Some(&after), None));
        assert!(matches!(r.v4, FamilyOutcome::Unchanged { .. }), "{r:?}");
        assert_eq!(rec.totals().unchanged_by_identity, 0);
        for _ in 0..3 {
            let again = read()?;
            assert!(
                Arc::ptr_eq(&again, &after),
                "the cache read again with nothing changed"
            );
            let same = rec.plan(input.clone())?;
            assert!(
                Arc::ptr_eq(&same, &plan),
                "planned again from the same input"
            );
            let r = rt.block_on(rec.reconcile_with(&same, Some(&again), None));
            assert!(matches!(r.v4, FamilyOutcome::Unchanged { .. }), "{r:?}");
            assert_eq!((r.saves, r.restores), (0, 0), "{r:?}");
        }
        assert_eq!(rec.totals().unchanged_by_identity, 3);

        // Someone deletes one of our rules: a fresh read, compared, repaired.
        delete_our_rule_for("10.0.0.1/32")?;
        let broken = read()?;
        assert!(
            !Arc::ptr_eq(&broken, &after),
            "a changed ruleset came from the cache"
        );
        must_change(
            &rt.block_on(rec.reconcile_with(&plan, Some(&broken), None))
                .v4,
        );
        assert!(
            netns::save(false, Some("nat"))?.contains("-d 10.0.0.1/32 -j SERVICE_PROXY_REDIRECT")
        );
        let repaired = read()?;
        let r = rt.block_on(rec.reconcile_with(&plan, Some(&repaired), None));
        assert!(matches!(r.v4, FamilyOutcome::Unchanged { .. }), "{r:?}");
        let by_identity = rec.totals().unchanged_by_identity;

        // A new plan against the read last found in step with the old one: compared, applied.
        let other = rec.plan(desired_input(&[net("10.0.0.1/32")], &[80]))?;
        assert_eq!(*other, desired(&[net("10.0.0.1/32")], &[80]));
        must_change(
            &rt.block_on(rec.reconcile_with(&other, Some(&repaired), None))
                .v4,
        );
        assert_eq!(rec.totals().unchanged_by_identity, by_identity);
        assert!(
            !netns::save(false, Some("nat"))?.contains("10.7.240.0/20"),
            "the new plan was not applied"
        );
        Ok(())
    })
    .unwrap();
}

/// The observer reads Envoy's dynamic listeners again only when the listener manager's
/// counters (or the Envoy process) change: a new LDS version is seen at once, an unchanged
/// Envoy is not asked for its megabyte of config dump every poll.
#[test]
fn listeners_are_read_again_only_when_envoys_listener_counters_move() {
    use service_proxy_agent::config::{CommonArgs, InterceptionMode, Settings};
    use service_proxy_agent::observe::Observer;
    use std::sync::Arc;
    netns::in_new_netns(|| {
        let mut mesh = Mesh::start(&[net("10.0.0.1/32")], &[])?;
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("empty.toml");
        std::fs::write(&config, "")?;
        let settings = Settings::resolve(
            &CommonArgs {
                config: Some(config),
                envoy_admin: Some(
                    service_proxy_agent::config::parse_admin_url(&mesh.envoy.admin_url())
                        .map_err(anyhow::Error::msg)?,
                ),
                interception: Some(InterceptionMode::Off),
                ..CommonArgs::default()
            },
            |k| (k == "GCE_METADATA_HOST").then(|| "127.0.0.1:1".to_owned()),
        )?;
        let observer = Observer::new(&settings);
        let rt = runtime();
        let listeners = |snap: &service_proxy_agent::observe::Snapshot| {
            snap.listeners
                .as_ref()
                .map(Arc::clone)
                .map_err(|e| anyhow::anyhow!("{e}"))
        };
        let vips = |snap: &service_proxy_agent::observe::Snapshot| snap.listener_vips();
        // Other tests' Envoys may start or stop between two snapshots (a new process is a
        // reason to read again): a few tries for one pair read once.
        let mut reused = false;
        for _ in 0..5 {
            let a = rt.block_on(observer.snapshot(false));
            let b = rt.block_on(observer.snapshot(false));
            assert_eq!(vips(&a), vec!["10.0.0.1/32"]);
            if Arc::ptr_eq(&listeners(&a)?, &listeners(&b)?) {
                reused = true;
                break;
            }
        }
        assert!(
            reused,
            "an unchanged Envoy's listeners were read at every snapshot"
        );
        let before = listeners(&rt.block_on(observer.snapshot(false)))?;
        mesh.set(&[net("10.0.0.1/32"), net("10.0.0.2/32")], &[])?;
        let after = rt.block_on(observer.snapshot(false));
        assert!(!Arc::ptr_eq(&before, &listeners(&after)?));
        assert_eq!(vips(&after), vec!["10.0.0.1/32", "10.0.0.2/32"]);
        Ok(())
    })
    .unwrap();
}
