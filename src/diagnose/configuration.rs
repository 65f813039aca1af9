//! Configuration checks: does Envoy's bootstrap name this VM, did the mesh send it listeners,
//! did Envoy accept them, can it write its access log, and do the serving ports suit the mesh?
//!
//! - NODE_METADATA_MISMATCH: the bootstrap node (`server_info.node`) lacks
//!   `TRAFFICDIRECTOR_NETWORK_NAME` / `TRAFFICDIRECTOR_GCP_PROJECT_NUMBER`, or they, or the node
//!   id `projects/<num>/networks/<net>/nodes/<uuid>`, differ from the VM's network and project
//!   number. A `mesh:`/`scope:` node id names its configuration by mesh or scope, so only its
//!   project is compared (and the network key may be absent). On Shared VPC the network belongs
//!   to the host project, whose number is accepted as well as the VM's. An empty network name is
//!   `default`, as gcloud writes it.
//! - NO_MESH_CONFIG: connected, no error, but no dynamic listener: the control plane answered
//!   with none (`lds.update_success` ≥ 1) or never answered for listeners (initial fetch timed
//!   out while connected).
//! - CONFIG_REJECTED: listeners holding `error_state` (Envoy's reason in the detail; the nameless
//!   entry Envoy adds is folded into its listener), and rejection counters growing while the
//!   agent watches (until an accepted listener update, or `--finding-ttl`).
//! - ACCESS_LOG_NOT_WRITABLE: an `error_state` saying `unable to open file 'P'`, or
//!   `TRAFFICDIRECTOR_ACCESS_LOG_PATH` that Envoy's UID cannot write, judged from the owner and
//!   mode bits of the file and every directory above it (no ACLs, no read-only mounts).
//! - SERVER_FIRST_PROTOCOL: serving ports of protocols whose server speaks first
//!   ([`SERVER_FIRST_PORTS`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::diagnose::control_plane::{initial_fetch_timeouts, list};
use crate::diagnose::log_classifier::unopenable_files;
use crate::diagnose::{CheckContext, GroupOutcome};
use crate::finding::{Finding, FindingId};
use crate::observe::Snapshot;
use crate::observe::envoy_admin::{DynamicListener, Node};
use crate::observe::files::StatResult;
use crate::observe::metadata::VmMetadata;
use crate::text::{strip_control, truncate_with_ellipsis};

use crate::contract::node_metadata;
pub use crate::contract::node_metadata::{
    ACCESS_LOG_PATH as ACCESS_LOG_KEY, GCP_PROJECT_NUMBER as PROJECT_KEY,
    NETWORK_NAME as NETWORK_KEY,
};

/// Well-known ports of protocols where the server sends the first bytes (a greeting or
/// banner), so a client behind Envoy's HTTP filter chains waits forever. Ports only: the mesh
/// cannot tell a protocol by anything else before the first bytes.
pub const SERVER_FIRST_PORTS: &[(u16, &str)] = &[
    (21, "FTP"),
    (25, "SMTP"),
    (110, "POP3"),
    (119, "NNTP"),
    (143, "IMAP"),
    (587, "SMTP submission"),
    (3306, "MySQL"),
    (5900, "VNC"),
];

/// How the detail of a CONFIG_REJECTED from listener `error_state`s starts (the log merge
/// relies on it to tell that the snapshot already has Envoy's reason).
pub const REJECTED_LISTENER_PREFIX: &str = "Envoy holds a rejected update of listener";

const MAX_DETAIL: usize = 1024;
const MAX_TEXT: usize = 300;
const MAX_LISTED: usize = 5;

pub fn check(snap: &Snapshot, ctx: &CheckContext<'_>) -> GroupOutcome {
    let mut out = GroupOutcome::default();
    let mut unchecked: Vec<String> = Vec::new();
    let mut notes: Vec<String> = Vec::new();

    match &snap.server_info {
        Ok(info) => {
            let has_xds = snap
                .stats
                .as_ref()
                .map_or(true, |s| s.control_plane_connected_state.is_some());
            if info.node.id.is_empty() && info.node.metadata.is_empty() {
                // Old Envoys do not show their node in /server_info: unknown, not lacking.
                unchecked.push("Envoy's /server_info shows no bootstrap node".into());
            } else {
                match node_mismatch(&info.node, snap.vm.as_ref().ok(), has_xds) {
                    NodeVerdict::Mismatch(detail) => out.findings.push(Finding::new(
                        FindingId::NodeMetadataMismatch,
                        truncate_with_ellipsis(&detail, MAX_DETAIL),
                    )),
                    NodeVerdict::Match(note) | NodeVerdict::NotApplicable(note) => {
                        notes.push(note);
                    }
                }
            }
            if let Err(e) = &snap.listeners {
                unchecked.push(format!("dynamic listeners unreadable ({e})"));
            }
            if snap.vm.is_err() {
                unchecked.push(
                    "the VM's network and project are unknown (metadata server not answering)"
                        .into(),
                );
            }
        }
        Err(_) => unchecked.push(
            "Envoy's admin is not answering, so its bootstrap, listeners and stats cannot be read"
                .into(),
        ),
    }

    if let Ok(listeners) = &snap.listeners {
        let dynamic = listeners
            .iter()
            .filter(|l| l.active.is_some() || l.warming.is_some())
            .count();
        notes.push(format!(
            "{dynamic} dynamic listener{}",
            if dynamic == 1 { "" } else { "s" }
        ));
        if let Some(f) = no_mesh_config(snap, ctx, listeners, dynamic) {
            out.findings.push(f);
        }
    }
    out.findings.extend(rejected(snap, ctx));
    let (access, unknown) = access_log(snap);
    out.findings.extend(access);
    unchecked.extend(unknown);
    if let Some(f) = server_first(&snap.resolved.serving_ports) {
        out.findings.push(f);
    }
    if !snap.resolved.serving_ports.is_empty() {
        let ports: Vec<String> = snap
            .resolved
            .serving_ports
            .iter()
            .map(u16::to_string)
            .collect();
        notes.push(format!("serving ports {}", list(&ports, 8)));
    }
    out.note = notes.join("; ");
    if !unchecked.is_empty() {
        out.not_checked = Some(unchecked.join("; "));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// NODE_METADATA_MISMATCH
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeVerdict {
    Mismatch(String),
    /// What matched, for the group's note.
    Match(String),
    NotApplicable(String),
}

/// `projects/<num>/networks/<net>/nodes/<uuid>` → (num, net).
pub fn parse_node_id(id: &str) -> Option<(&str, &str)> {
    let rest = id.strip_prefix("projects/")?;
    let (project, rest) = rest.split_once('/')?;
    let rest = rest.strip_prefix("networks/")?;
    let (network, rest) = rest.split_once('/')?;
    rest.strip_prefix("nodes/")?;
    (!project.is_empty() && !network.is_empty()).then_some((project, network))
}

/// A node metadata value as text: Cloud Service Mesh's keys are strings, but a number written
/// by hand is a JSON number in Envoy's Struct.
fn meta(node: &Node, key: &str) -> Option<String> {
    node.metadata_text(key)
}

fn net_name(n: &str) -> &str {
    if n.is_empty() { "default" } else { n }
}

pub fn node_mismatch(node: &Node, vm: Option<&VmMetadata>, has_xds: bool) -> NodeVerdict {
    let meta_net = meta(node, NETWORK_KEY);
    let meta_proj = meta(node, PROJECT_KEY);
    let id = parse_node_id(&node.id);
    if !has_xds && meta_net.is_none() && meta_proj.is_none() {
        return NodeVerdict::NotApplicable(format!(
            "Envoy has no xDS control plane and no {}* node metadata",
            node_metadata::PREFIX
        ));
    }
    let id_scoped = id.is_some_and(|(_, n)| n.starts_with("mesh:") || n.starts_with("scope:"));
    let mut problems: Vec<String> = Vec::new();
    let mut fine: Vec<String> = Vec::new();
    if meta_net.is_none() && !id_scoped {
        problems.push(format!("the node metadata lacks {NETWORK_KEY}"));
    }
    if meta_proj.is_none() {
        problems.push(format!("the node metadata lacks {PROJECT_KEY}"));
    }

    let vm_net = vm.and_then(|v| v.network.as_ref().ok());
    let vm_proj = vm.map(|v| v.project_number.to_string());
    let host_proj = vm_net
        .map(|n| n.project_number.to_string())
        .filter(|h| Some(h) != vm_proj.as_ref());
    let project_ok = |p: &str| Some(p) == vm_proj.as_deref() || Some(p) == host_proj.as_deref();
    // `<what> is "P" but ...`: the VM's number, and its Shared VPC host project's if any.
    let differs = |what: &str, p: &str| match (&vm_proj, &host_proj) {
        (Some(v), Some(h)) => format!(
            "{what} is \"{p}\", neither the VM's project number \"{v}\" nor its Shared VPC host project's \"{h}\""
        ),
        (Some(v), None) => format!("{what} is \"{p}\" but the VM's project number is \"{v}\""),
        _ => format!("{what} is \"{p}\""),
    };

    // Network: metadata, then the node id.
    let mut nets: Vec<(&str, String)> = Vec::new();
    if let Some(n) = &meta_net {
        nets.push((NETWORK_KEY, n.clone()));
    }
    if let Some((_, n)) = id.filter(|_| !id_scoped) {
        nets.push((
            "the node id's network",
            truncate_with_ellipsis(&strip_control(n), 128),
        ));
    }
    for (what, n) in &nets {
        match vm_net {
            Some(v) if net_name(n) == v.name => fine.push(format!("{what} \"{n}\" matches")),
            Some(v) => problems.push(format!(
                "{what} is \"{n}\" but the VM's network is \"{}\"",
                v.name
            )),
            None => {}
        }
    }
    if vm_net.is_none()
        && let [(a, an), (b, bn)] = nets.as_slice()
        && net_name(an) != net_name(bn)
    {
        problems.push(format!("{a} is \"{an}\" but {b} is \"{bn}\""));
    }

    // Project: metadata, then the node id.
    let mut projs: Vec<(&str, String)> = Vec::new();
    if let Some(p) = &meta_proj {
        projs.push((PROJECT_KEY, p.clone()));
    }
    if let Some((p, _)) = id {
        projs.push((
            "the node id's project",
            truncate_with_ellipsis(&strip_control(p), 64),
        ));
    }
    for (what, p) in &projs {
        match &vm_proj {
            Some(_) if project_ok(p) => {
                if host_proj.as_deref() == Some(p.as_str()) {
                    fine.push(format!("{what} \"{p}\" is the Shared VPC host project"));
                } else {
                    fine.push(format!("{what} \"{p}\" matches"));
                }
            }
            Some(_) => problems.push(differs(what, p)),
            None => {}
        }
    }
    if vm_proj.is_none()
        && let [(a, ap), (b, bp)] = projs.as_slice()
        && ap != bp
    {
        problems.push(format!("{a} is \"{ap}\" but {b} is \"{bp}\""));
    }
    if problems.is_empty() {
        let what = match (&meta_net, &meta_proj) {
            (Some(n), Some(p)) => format!("node network \"{}\", project {p}", net_name(n)),
            (None, Some(p)) => format!("node {}, project {p}", id.map_or("", |(_, n)| n)),
            _ => "node".into(),
        };
        return NodeVerdict::Match(if vm.is_some() {
            format!("{what} match the VM")
        } else {
            what
        });
    }
    let mut d = format!(
        "Envoy's bootstrap node \"{}\": {}",
        truncate_with_ellipsis(&strip_control(&node.id), 160),
        problems.join("; ")
    );
    if !fine.is_empty() {
        d.push_str(&format!(" ({})", fine.join(", ")));
    }
    d.push('.');
    NodeVerdict::Mismatch(d)
}

// ---------------------------------------------------------------------------------------------
// NO_MESH_CONFIG
// ---------------------------------------------------------------------------------------------

fn no_mesh_config(
    snap: &Snapshot,
    ctx: &CheckContext<'_>,
    listeners: &[DynamicListener],
    dynamic: usize,
) -> Option<Finding> {
    let stats = snap.stats.as_ref().ok()?;
    if !ctx.history.connected(stats.control_plane_connected_state)
        || dynamic > 0
        || listeners.iter().any(|l| l.error.is_some())
    {
        return None;
    }
    let lds_timeout = stats
        .init_fetch_timeouts
        .contains_key("listener_manager.lds.init_fetch_timeout");
    let detail = match stats.lds_update_success {
        Some(n) if n >= 1 => format!(
            "Envoy is connected to the control plane and accepted {n} listener update{} (version \"{}\"), but has no dynamic listener: the mesh sends this node none.",
            if n == 1 { "" } else { "s" },
            stats.lds_version_text.as_deref().unwrap_or("")
        ),
        _ if lds_timeout => format!(
            "Envoy is connected to the control plane, but its initial fetch timed out for {} and it has no dynamic listener: the mesh did not answer for this node's listeners.",
            initial_fetch_timeouts(stats)
        ),
        _ => return None,
    };
    Some(Finding::new(FindingId::NoMeshConfig, detail))
}

// ---------------------------------------------------------------------------------------------
// CONFIG_REJECTED
// ---------------------------------------------------------------------------------------------

fn one_line(s: &str, max: usize) -> String {
    let joined = s
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    truncate_with_ellipsis(&strip_control(&joined), max)
}

/// Each rejected listener once: (name, Envoy's reason, last attempt). Envoy's nameless entry
/// is folded into the listener it names (or that has the same reason).
pub fn rejected_listeners(listeners: &[DynamicListener]) -> Vec<(String, String, Option<String>)> {
    let mut out: Vec<(String, String, Option<String>)> = Vec::new();
    let mut entries: Vec<&DynamicListener> =
        listeners.iter().filter(|l| l.error.is_some()).collect();
    // Named entries first, so a nameless one finds its listener.
    entries.sort_by_key(|l| l.name.is_none());
    for l in entries {
        let Some(e) = &l.error else { continue };
        let details = e.details.trim().to_owned();
        let name = l.name.clone().or_else(|| e.failed_listener.clone());
        let dup = out.iter().any(|(n, d, _)| {
            *d == details && (name.is_none() || name.as_deref() == Some(n.as_str()))
        });
        if dup {
            continue;
        }
        out.push((
            name.unwrap_or_else(|| "(unnamed)".into()),
            details,
            e.last_update_attempt.clone(),
        ));
    }
    out
}

fn rejected(snap: &Snapshot, ctx: &CheckContext<'_>) -> Vec<Finding> {
    let h = ctx.history;
    let ttl = ctx.settings.finding_ttl;
    let recent = |t: Option<std::time::Instant>| {
        t.is_some_and(|t| ctx.now.saturating_duration_since(t) <= ttl)
    };
    let counter = |name: &str, c: &crate::diagnose::history::Counter| {
        format!(
            "{name} grew from {} to {}",
            c.first.unwrap_or(0),
            c.last.unwrap_or(0)
        )
    };
    // Grew recently, and no listener update was accepted since.
    let superseded = match (h.lds_accepted_at, h.lds_rejected_grew_at) {
        (Some(accepted), Some(rejected)) => accepted > rejected,
        _ => false,
    };
    let lds_grew = recent(h.lds_rejected_grew_at) && !superseded;
    let mut findings = Vec::new();
    let listeners = snap
        .listeners
        .as_ref()
        .map(|l| rejected_listeners(l))
        .unwrap_or_default();
    if !listeners.is_empty() {
        let parts: Vec<String> = listeners
            .iter()
            .take(MAX_LISTED)
            .map(|(name, details, at)| {
                format!(
                    "{name}{}: {}",
                    at.as_deref()
                        .map(|a| format!(" (last attempt {})", one_line(a, 40)))
                        .unwrap_or_default(),
                    one_line(details, MAX_TEXT)
                )
            })
            .collect();
        let mut d = format!(
            "{REJECTED_LISTENER_PREFIX}{} {}",
            if listeners.len() == 1 { "" } else { "s" },
            parts.join("; ")
        );
        if listeners.len() > MAX_LISTED {
            d.push_str(&format!("; and {} more", listeners.len() - MAX_LISTED));
        }
        if lds_grew {
            d.push_str(&format!(
                " ({})",
                counter("listener_manager.lds.update_rejected", &h.lds_rejected)
            ));
        }
        findings.push(Finding::new(
            FindingId::ConfigRejected,
            truncate_with_ellipsis(&d, MAX_DETAIL),
        ));
    } else if lds_grew {
        findings.push(Finding::new(
            FindingId::ConfigRejected,
            format!(
                "Envoy rejected a listener update: {} (Envoy's reason is in its log).",
                counter("listener_manager.lds.update_rejected", &h.lds_rejected)
            ),
        ));
    }
    if recent(h.cds_rejected_grew_at) {
        findings.push(Finding::new(
            FindingId::ConfigRejected,
            format!(
                "Envoy rejected a cluster update: {} (Envoy's reason is in its log).",
                counter("cluster_manager.cds.update_rejected", &h.cds_rejected)
            ),
        ));
    }
    findings
}

// ---------------------------------------------------------------------------------------------
// ACCESS_LOG_NOT_WRITABLE
// ---------------------------------------------------------------------------------------------

pub use crate::observe::files::FileFacts;

/// Who Envoy runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub uid: u32,
    /// Effective and supplementary groups; `None` when unknown.
    pub gids: Option<Vec<u32>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    Allowed,
    /// Why not, naming the file or directory, its owner and mode.
    Denied(String),
    Unknown(String),
}

const W_OK: u32 = 2;
const X_OK: u32 = 1;

/// Whether the mode bits let `who` do `want` (a combination of r/w/x bits); `None` when it
/// depends on group membership we do not know.
fn permits(f: &FileFacts, who: &Credentials, want: u32) -> Option<bool> {
    let has = |shift: u32| (f.mode >> shift) & want == want;
    if who.uid == 0 {
        // Root passes read/write checks; it may search a directory always, and run a file
        // with any x bit.
        return Some(want & X_OK == 0 || f.is_dir || f.mode & 0o111 != 0);
    }
    if f.uid == who.uid {
        return Some(has(6));
    }
    match &who.gids {
        Some(g) if g.contains(&f.gid) => Some(has(3)),
        Some(_) => Some(has(0)),
        None if has(3) == has(0) => Some(has(0)),
        None => None,
    }
}

fn describe(p: &Path, f: &FileFacts) -> String {
    format!(
        "'{}' (owner {}:{}, mode {:04o})",
        p.display(),
        f.uid,
        f.gid,
        f.mode & 0o7777
    )
}

/// Can `who` open `path` for appending (creating it if needed)? Judged from owner and mode bits
/// of the file and every directory above it, as the kernel would (ACLs and read-only mounts
/// aside). `stat` gives a path's facts as observed, `Ok(None)` when it does not exist.
pub fn can_write(path: &Path, who: &Credentials, stat: impl Fn(&Path) -> StatResult) -> Access {
    if !path.is_absolute() {
        return Access::Unknown(format!(
            "'{}' is relative to Envoy's working directory",
            path.display()
        ));
    }
    let uid = who.uid;
    let ancestors: Vec<&Path> = path.ancestors().skip(1).collect();
    for dir in ancestors.iter().rev() {
        match stat(dir) {
            Err(e) => return Access::Unknown(format!("cannot inspect '{}': {e}", dir.display())),
            Ok(None) => {
                return Access::Denied(format!(
                    "directory '{}' does not exist (Envoy does not create directories)",
                    dir.display()
                ));
            }
            Ok(Some(f)) if !f.is_dir => {
                return Access::Denied(format!("'{}' is not a directory", dir.display()));
            }
            Ok(Some(f)) => match permits(&f, who, X_OK) {
                Some(true) => {}
                Some(false) => {
                    return Access::Denied(format!(
                        "UID {uid} cannot enter directory {}",
                        describe(dir, &f)
                    ));
                }
                None => {
                    return Access::Unknown(format!(
                        "whether UID {uid} may enter {} depends on its groups",
                        describe(dir, &f)
                    ));
                }
            },
        }
    }
    match stat(path) {
        Err(e) => Access::Unknown(format!("cannot inspect '{}': {e}", path.display())),
        Ok(Some(f)) if f.is_dir => Access::Denied(format!("'{}' is a directory", path.display())),
        Ok(Some(f)) => match permits(&f, who, W_OK) {
            Some(true) => Access::Allowed,
            Some(false) => Access::Denied(format!(
                "{} is not writable by UID {uid}",
                describe(path, &f)
            )),
            None => Access::Unknown(format!(
                "whether UID {uid} may write {} depends on its groups",
                describe(path, &f)
            )),
        },
        Ok(None) => {
            let Some(dir) = path.parent() else {
                return Access::Unknown("no parent directory".into());
            };
            match stat(dir) {
                Ok(Some(f)) => match permits(&f, who, W_OK | X_OK) {
                    Some(true) => Access::Allowed,
                    Some(false) => Access::Denied(format!(
                        "'{}' does not exist and UID {uid} may not create it in {}",
                        path.display(),
                        describe(dir, &f)
                    )),
                    None => Access::Unknown(format!(
                        "whether UID {uid} may create files in {} depends on its groups",
                        describe(dir, &f)
                    )),
                },
                Ok(None) => Access::Denied(format!("directory '{}' does not exist", dir.display())),
                Err(e) => Access::Unknown(format!("cannot inspect '{}': {e}", dir.display())),
            }
        }
    }
}

fn credentials(snap: &Snapshot) -> Option<Credentials> {
    Some(Credentials {
        uid: snap.resolved.envoy_uid?,
        gids: snap.envoy_groups.clone(),
    })
}

#[derive(Default)]
struct AccessEvidence {
    denied: Option<String>,
    /// (listener, Envoy's reason)
    rejections: Vec<(String, String)>,
}

/// ACCESS_LOG_NOT_WRITABLE findings (one per path), and what could not be judged.
fn access_log(snap: &Snapshot) -> (Vec<Finding>, Vec<String>) {
    let mut by_path: BTreeMap<String, AccessEvidence> = BTreeMap::new();
    let mut unknown = Vec::new();
    if let Ok(listeners) = &snap.listeners {
        for (name, details, _) in rejected_listeners(listeners) {
            for (path, reason) in unopenable_files(&details) {
                let e = by_path.entry(path).or_default();
                if e.rejections.len() < MAX_LISTED && !e.rejections.iter().any(|(n, _)| *n == name)
                {
                    e.rejections.push((name.clone(), one_line(&reason, 120)));
                }
            }
        }
    }
    let who = credentials(snap);
    if let Some(chain) = &snap.access_log {
        let path = &chain.path;
        match &who {
            None => unknown.push(format!(
                "{ACCESS_LOG_KEY} '{path}' not judged: the UID Envoy runs as is unknown"
            )),
            Some(who) => match can_write(Path::new(path), who, |p| chain.stat(p)) {
                Access::Allowed => {}
                Access::Denied(why) => by_path.entry(path.clone()).or_default().denied = Some(why),
                Access::Unknown(why) => unknown.push(format!("{ACCESS_LOG_KEY}: {why}")),
            },
        }
    }
    let uid_text = who.as_ref().map_or_else(
        || "the UID Envoy runs as is unknown".to_owned(),
        |w| format!("Envoy runs as UID {}", w.uid),
    );
    let findings = by_path
        .into_iter()
        .take(MAX_LISTED)
        .map(|(path, e)| {
            let path_text = one_line(&path, 256);
            let mut d = format!("Envoy cannot write its access log '{path_text}'");
            if let Some(why) = &e.denied {
                d.push_str(&format!(": {}", one_line(why, MAX_TEXT)));
            }
            d.push_str(&format!("; {uid_text}"));
            if !e.rejections.is_empty() {
                let names: Vec<&str> = e.rejections.iter().map(|(n, _)| n.as_str()).collect();
                let reason = e.rejections.first().map(|(_, r)| r.as_str()).unwrap_or("");
                d.push_str(&format!(
                    ". Envoy rejected listener{} {} because of it: unable to open file '{path_text}': {reason}",
                    if names.len() == 1 { "" } else { "s" },
                    names.join(", ")
                ));
            } else {
                d.push_str(&format!(
                    ". It is {ACCESS_LOG_KEY}: listeners that log there will be rejected"
                ));
            }
            d.push('.');
            let dir = Path::new(&path)
                .parent()
                .map_or_else(|| PathBuf::from("/"), Path::to_path_buf);
            let remediation = match &who {
                Some(w) => format!(
                    "Let UID {} write '{path_text}' (e.g. `install -d -o {} {}` for its directory, or `chown {} {path_text}`), or set {ACCESS_LOG_KEY} to a path that user can write; Envoy then accepts the listeners at the next update.",
                    w.uid,
                    w.uid,
                    one_line(&dir.display().to_string(), 256),
                    w.uid
                ),
                None => FindingId::AccessLogNotWritable.default_remediation().to_owned(),
            };
            Finding::new(
                FindingId::AccessLogNotWritable,
                truncate_with_ellipsis(&d, MAX_DETAIL),
            )
            .with_remediation(remediation)
        })
        .collect();
    (findings, unknown)
}

// ---------------------------------------------------------------------------------------------
// SERVER_FIRST_PROTOCOL
// ---------------------------------------------------------------------------------------------

fn server_first(ports: &[u16]) -> Option<Finding> {
    let hits: Vec<String> = ports
        .iter()
        .filter_map(|p| {
            SERVER_FIRST_PORTS
                .iter()
                .find(|(q, _)| q == p)
                .map(|(q, name)| format!("{q} ({name})"))
        })
        .collect();
    if hits.is_empty() {
        return None;
    }
    Some(Finding::new(
        FindingId::ServerFirstProtocol,
        format!(
            "serving port{} {} {} a protocol whose server speaks first: intercepted by Envoy, its clients wait for a greeting that never comes.",
            if hits.len() == 1 { "" } else { "s" },
            list(&hits, 8),
            if hits.len() == 1 { "is" } else { "are" }
        ),
    ))
}

// ---------------------------------------------------------------------------------------------
// Log-derived findings of this group
// ---------------------------------------------------------------------------------------------

/// Merges the log-derived findings of this group (with their tracker keys: the resource kind
/// for CONFIG_REJECTED, the path for ACCESS_LOG_NOT_WRITABLE). A logged listener rejection is
/// dropped when the snapshot already holds listener `error_state`s (the same reason, current);
/// a logged access-log failure is dropped when the snapshot already names the path.
pub fn merge_log_findings(out: &mut GroupOutcome, log: Vec<(Finding, String)>) {
    for (f, key) in log {
        let covered = match f.id {
            FindingId::ConfigRejected => {
                key == "Listener"
                    && out.findings.iter().any(|e| {
                        e.id == FindingId::ConfigRejected
                            && e.detail.starts_with(REJECTED_LISTENER_PREFIX)
                    })
            }
            FindingId::AccessLogNotWritable => out.findings.iter().any(|e| {
                e.id == FindingId::AccessLogNotWritable && e.detail.contains(&format!("'{key}'"))
            }),
            _ => false,
        };
        if !covered
            && !out
                .findings
                .iter()
                .any(|e| e.id == f.id && e.detail == f.detail)
        {
            out.findings.push(f);
        }
    }
}

/// NO_MESH_CONFIG gives way when the control plane refused Envoy or Envoy keeps losing its
/// stream (it is then that which keeps listeners away, and `connected_state` 1 was a moment
/// between retries).
pub fn explained_by(out: &mut GroupOutcome, cause: FindingId) {
    let before = out.findings.len();
    out.findings.retain(|f| f.id != FindingId::NoMeshConfig);
    if out.findings.len() != before {
        let note = format!("no listener: explained by {cause}");
        out.note = if out.note.is_empty() {
            note
        } else {
            format!("{}; {note}", out.note)
        };
    }
}

#[cfg(test)]
mod tests;
