//! The findings catalogue: one row per finding carries all the finding is — its stable name, severity, check group, the guide section it automates, and the
//! default summary and remediation — so the contract (IDs, severities, doc references) lives in
//! one place and everything else (serialization, `doctor`'s grouping, the metrics' labels, the
//! `findings` attribute) is derived from it.
//!
//! # Adding a finding raised from the snapshot
//!
//! Three files, plus tests:
//!
//! 1. **`src/finding.rs`**: a row in `catalogue!` below: `/// Raised when: ...` then
//!    `Variant = "NAME" => severity, group, doc::SECTION, "summary", "remediation";`. A new guide section is a `doc::` constant whose
//!    anchor exists in docs/troubleshooting-guide.md (a unit test checks it).
//! 2. **`src/diagnose/<group>.rs`**: the check, a pure function of the [`crate::observe::Snapshot`]
//!    (and the time it is handed); build the [`Finding`] with `Finding::new(FindingId::Variant,
//!    detail)`. When it needs a fact the snapshot lacks, that fact is read in `observe` first
//!    (a new snapshot field), never in `diagnose` (`diagnose_does_no_io` fails otherwise).
//! 3. **`README.md`**: the row of the "Findings" table (`tests/it/readme.rs` fails without it or when
//!    it differs from the row in 1).
//!
//! Tests: unit tests beside the check that build the snapshot in memory
//! (`diagnose::testutil::snapshot()` and change what the finding needs), and a scenario that
//! provokes the finding with real parts, named in `COVERAGE` of the scenarios test
//! (`every_finding_has_a_scenario` fails without it).
//!
//! That is all: the row's doc comment says when the finding is raised (the contract's
//! catalogue, docs/contract.md#4-1-catalogue, points here and at the README rather than keeping
//! a third copy), and nothing else lists findings by hand: metrics, guest attributes, `doctor`
//! and the group of each finding follow the catalogue.

use serde::Serialize;
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
    Info,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
    }

    /// The Cloud Logging severity name used when this finding is logged.
    pub fn log_severity(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Warning => "WARNING",
            Severity::Info => "INFO",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Sections of the troubleshooting guide ("Troubleshooting Envoy deployments", the page in
/// docs/troubleshooting-guide.md), used as the `doc` field so an SRE can find the manual procedure we automate.
pub mod doc {
    /// A section of the guide: its title as the `doc` field carries it, and its anchor in
    /// docs/troubleshooting-guide.md.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Section {
        pub title: &'static str,
        pub anchor: &'static str,
    }

    pub const ENVOY_VERSION: Section = Section {
        title: "Troubleshooting Envoy deployments › Check the Envoy version installed on the VM",
        anchor: "envoy-version",
    };
    pub const PROXY_NOT_CONNECTING: Section = Section {
        title: "Troubleshooting Envoy deployments › Proxy does not connect to Cloud Service Mesh",
        anchor: "proxy-not-connecting",
    };
    pub const SERVICES_UNREACHABLE: Section = Section {
        title: "Troubleshooting Envoy deployments › Services configured with Cloud Service Mesh are not reachable",
        anchor: "services-unreachable",
    };
    pub const ACCESS_LOG: Section = Section {
        title: "Troubleshooting Envoy deployments › Services are not reachable when Envoy access logging is configured",
        anchor: "access-log",
    };
    pub const CONFIG_ERRORS_IN_LOG: Section = Section {
        title: "Troubleshooting Envoy deployments › Error messages in the Envoy logs indicate a configuration problem",
        anchor: "config-errors-in-log",
    };
    pub const GUEST_ATTRIBUTES: Section = Section {
        title: "Troubleshooting Compute Engine › Communication channels for troubleshooting › VM guest attributes",
        anchor: "guest-attributes",
    };
    pub const TEMPLATE_VMS_UNREACHABLE: Section = Section {
        title: "Troubleshooting Compute Engine › VMs created from a service-proxy instance template cannot reach Cloud Service Mesh services",
        anchor: "template-vms-unreachable",
    };
    pub const INBOUND_UNREACHABLE: Section = Section {
        title: "Troubleshooting Compute Engine › Inbound traffic interception is configured on a workload port, but the port cannot be reached from outside the VM",
        anchor: "inbound-unreachable",
    };
    pub const SERVER_FIRST: Section = Section {
        title: "Troubleshooting Compute Engine › Issues when connections use server-first protocols",
        anchor: "server-first",
    };
    pub const MOST_ENDPOINTS_UNHEALTHY: Section = Section {
        title: "Troubleshooting service mesh health › Cloud Service Mesh behavior when most endpoints are unhealthy",
        anchor: "most-endpoints-unhealthy",
    };
    pub const SUBOPTIMAL_DISTRIBUTION: Section = Section {
        title: "Troubleshooting service mesh health › Suboptimal traffic distribution because of unhealthy backends",
        anchor: "suboptimal-distribution",
    };
}

/// The check groups, in report order; each finding belongs to one (its catalogue row says which).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckGroup {
    Proxy,
    ControlPlane,
    Configuration,
    Interception,
    Endpoints,
    Metadata,
    /// docs/contract.md#10-project-side-checks: asked of Google's APIs (see `project`).
    Project,
}

impl CheckGroup {
    pub const ALL: [CheckGroup; 7] = [
        CheckGroup::Proxy,
        CheckGroup::ControlPlane,
        CheckGroup::Configuration,
        CheckGroup::Interception,
        CheckGroup::Endpoints,
        CheckGroup::Metadata,
        CheckGroup::Project,
    ];

    pub fn title(self) -> &'static str {
        match self {
            CheckGroup::Proxy => "proxy",
            CheckGroup::ControlPlane => "control plane",
            CheckGroup::Configuration => "configuration",
            CheckGroup::Interception => "interception",
            CheckGroup::Endpoints => "endpoints",
            CheckGroup::Metadata => "metadata & agent",
            CheckGroup::Project => "project",
        }
    }

    /// The group a finding belongs to: its catalogue row says.
    pub fn of(id: FindingId) -> CheckGroup {
        id.group()
    }
}

macro_rules! catalogue {
    ($( $(#[$meta:meta])* $variant:ident = $name:literal => $sev:ident, $group:ident, $doc:expr, $summary:expr, $remediation:expr; )*) => {
        /// Stable finding IDs. The serialized form (`ENVOY_NOT_RUNNING`, ...) is the contract.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(rename_all = "SCREAMING_SNAKE_CASE")]
        pub enum FindingId { $( $(#[$meta])* $variant, )* }

        impl FindingId {
            pub const ALL: &'static [FindingId] = &[ $( FindingId::$variant, )* ];

            /// The stable name (`ENVOY_NOT_RUNNING`): the contract, also the serialized form.
            pub fn as_str(self) -> &'static str {
                match self { $( FindingId::$variant => $name, )* }
            }

            /// The check group that raises it (and `doctor` reports it under).
            pub fn group(self) -> CheckGroup {
                match self { $( FindingId::$variant => CheckGroup::$group, )* }
            }

            pub fn severity(self) -> Severity {
                match self { $( FindingId::$variant => Severity::$sev, )* }
            }

            /// The guide section's title (the `doc` field).
            pub fn doc(self) -> &'static str {
                match self { $( FindingId::$variant => $doc.title, )* }
            }

            /// The section's anchor in docs/troubleshooting-guide.md.
            pub fn guide_anchor(self) -> &'static str {
                match self { $( FindingId::$variant => $doc.anchor, )* }
            }

            /// One line of what is wrong, used when a check has nothing more specific to say.
            pub fn default_summary(self) -> &'static str {
                match self { $( FindingId::$variant => $summary, )* }
            }

            /// What to do, in the words of the troubleshooting guide.
            pub fn default_remediation(self) -> &'static str {
                match self { $( FindingId::$variant => $remediation, )* }
            }
        }
    };
}

catalogue! {
    /// Raised when: no `envoy` process exists.
    EnvoyNotRunning = "ENVOY_NOT_RUNNING" => Error, Proxy, doc::SERVICES_UNREACHABLE,
        "No Envoy process is running",
        "Start the sidecar (`systemctl start envoy`) and check why it stopped in /var/log/envoy/envoy.err.log; if the VM came from a service-proxy instance template, check the bootstrap-status guest attribute.";
    /// Raised when: the process exists but its admin API does not answer.
    EnvoyAdminUnreachable = "ENVOY_ADMIN_UNREACHABLE" => Error, Proxy, doc::SERVICES_UNREACHABLE,
        "Envoy is running but its admin interface does not answer",
        "Check that Envoy's admin listener is on the address the agent uses (--envoy-admin, default http://127.0.0.1:15000) and that Envoy is not stuck; restart it if it stays unresponsive.";
    /// Raised when: `server_info.state` stays something other than `LIVE` past a grace period.
    EnvoyNotLive = "ENVOY_NOT_LIVE" => Warning, Proxy, doc::SERVICES_UNREACHABLE,
        "Envoy is not LIVE",
        "Envoy is still initializing or is draining. If it stays that way, look in the Envoy log for initial-fetch timeouts and control-plane errors.";
    /// Raised when: Envoy is older than **1.24.9**, the guide's minimum for sidecars.
    EnvoyVersionUnsupported = "ENVOY_VERSION_UNSUPPORTED" => Error, Proxy, doc::ENVOY_VERSION,
        "Envoy is older than 1.24.9, the minimum supported for sidecars",
        "Upgrade Envoy to 1.24.9 or later (recreate the VM from an up-to-date instance template, or install a newer Envoy binary).";
    /// Raised when: Envoy's PID or uptime reset **more than twice within 10 minutes**.
    EnvoyRestarting = "ENVOY_RESTARTING" => Warning, Proxy, doc::SERVICES_UNREACHABLE,
        "Envoy keeps restarting",
        "Envoy restarted more than twice in 10 minutes: read the last [critical] lines of /var/log/envoy/envoy.err.log and `journalctl -u envoy` for the reason.";
    /// Raised when: `control_plane.connected_state` stays 0 beyond a grace period, or the xDS stream
    /// keeps closing with code 14 or 13.
    ControlPlaneDisconnected = "CONTROL_PLANE_DISCONNECTED" => Error, ControlPlane, doc::PROXY_NOT_CONNECTING,
        "Envoy is not connected to the Cloud Service Mesh control plane",
        "Check that the VM can reach trafficdirector.googleapis.com:443 (firewall, DNS, proxy), that the Cloud Service Mesh API is enabled, and look in the Envoy log for errors about trafficdirector.googleapis.com.";
    /// Raised when: DNS resolution of, or a TCP connection to, `--control-plane` fails; the detail
    /// says which.
    ControlPlaneUnreachable = "CONTROL_PLANE_UNREACHABLE" => Error, ControlPlane, doc::PROXY_NOT_CONNECTING,
        "The Cloud Service Mesh control plane cannot be reached from this VM",
        "Make sure the VM can resolve trafficdirector.googleapis.com and open TCP port 443 to it: check firewall egress rules, DNS and any forward proxy.";
    /// Raised when: the stream closed with 5 and `... configuration was not found for network "N" in
    /// project "P"`; the detail gives N and P beside the VM's own network and project number.
    MeshConfigNotFound = "MESH_CONFIG_NOT_FOUND" => Error, ControlPlane, doc::CONFIG_ERRORS_IN_LOG,
        "Cloud Service Mesh has no configuration for the network and project Envoy asked with",
        "Check that a forwarding rule with load-balancing scheme INTERNAL_SELF_MANAGED exists in the VPC network; make the network in --service-proxy:network (or TRAFFICDIRECTOR_NETWORK_NAME in the bootstrap) match that forwarding rule's network, and TRAFFICDIRECTOR_GCP_PROJECT_NUMBER the project number.";
    /// Raised when: a stream close with code 5 whose message is `Requested entity was not found`.
    MeshEntityNotFound = "MESH_ENTITY_NOT_FOUND" => Error, ControlPlane, doc::CONFIG_ERRORS_IN_LOG,
        "Cloud Service Mesh did not find the entity Envoy asked for",
        "Check that the mesh or scope named in the bootstrap (node id and TRAFFICDIRECTOR_* metadata) exists in this project, and that the project number is right.";
    /// Raised when: the stream closed with 7 (API disabled, or the service account lacks
    /// permission).
    ControlPlanePermissionDenied = "CONTROL_PLANE_PERMISSION_DENIED" => Error, ControlPlane, doc::PROXY_NOT_CONNECTING,
        "The control plane refused Envoy: permission denied",
        "Enable the Cloud Service Mesh API (trafficdirector.googleapis.com) in the project and give the VM's service account the permission to use it (roles/trafficdirector.client).";
    /// Raised when: a stream close with code 16.
    ControlPlaneUnauthenticated = "CONTROL_PLANE_UNAUTHENTICATED" => Error, ControlPlane, doc::PROXY_NOT_CONNECTING,
        "The control plane refused Envoy's credentials",
        "Check that the VM has a service account and that Envoy uses Google default credentials; recreate the VM with --scopes=https://www.googleapis.com/auth/cloud-platform if its token cannot be issued.";
    /// Raised when: the VM's service-account scopes do not include
    /// `https://www.googleapis.com/auth/cloud-platform`.
    ScopesInsufficient = "SCOPES_INSUFFICIENT" => Error, Metadata, doc::PROXY_NOT_CONNECTING,
        "The VM's service account scopes do not include cloud-platform",
        "Recreate the VM (or its instance template) with --scopes=https://www.googleapis.com/auth/cloud-platform.";
    /// Raised when: the bootstrap's node metadata lacks `TRAFFICDIRECTOR_NETWORK_NAME` or
    /// `TRAFFICDIRECTOR_GCP_PROJECT_NUMBER`, or either differs from the VM's network / project
    /// number.
    NodeMetadataMismatch = "NODE_METADATA_MISMATCH" => Error, Configuration, doc::CONFIG_ERRORS_IN_LOG,
        "Envoy's bootstrap node metadata does not match this VM",
        "Set TRAFFICDIRECTOR_NETWORK_NAME to the VPC network of the forwarding rule and TRAFFICDIRECTOR_GCP_PROJECT_NUMBER to this project's number in the Envoy bootstrap (or rerun the bootstrap with `service-proxy-agent envoy-bootstrap`), then restart Envoy.";
    /// Raised when: Envoy is connected yet has received no dynamic listener (the initial fetch timed
    /// out, or the control plane sent none).
    NoMeshConfig = "NO_MESH_CONFIG" => Warning, Configuration, doc::TEMPLATE_VMS_UNREACHABLE,
        "Envoy is connected but received no listener from Cloud Service Mesh",
        "Check that the services you expect have a forwarding rule, target proxy and URL map in this network; inspect `curl localhost:15000/config_dump` for dynamic listeners.";
    /// Raised when: a dynamic resource carries `error_state`, an `update_rejected` counter grew, or
    /// a `gRPC config for ... rejected` line was logged; the detail carries Envoy's reason.
    ConfigRejected = "CONFIG_REJECTED" => Error, Configuration, doc::CONFIG_ERRORS_IN_LOG,
        "Envoy rejected configuration it received",
        "Read Envoy's reason in the detail; fix the offending resource (URL map, backend service, bootstrap) so that Envoy accepts it.";
    /// Raised when: a rejection or an Envoy exit says `unable to open file '<path>': Permission
    /// denied`, or `TRAFFICDIRECTOR_ACCESS_LOG_PATH` cannot be written by the Envoy user; the
    /// detail names the path and the UID.
    AccessLogNotWritable = "ACCESS_LOG_NOT_WRITABLE" => Error, Configuration, doc::ACCESS_LOG,
        "Envoy cannot write its access log, so its listeners are not programmed",
        "Change the permissions of the access log file (TRAFFICDIRECTOR_ACCESS_LOG_PATH) so that the user running Envoy can write it, or choose a path that user can write.";
    /// Raised when: there is an interception listener in Envoy, and no rule redirects to it.
    InterceptionMissing = "INTERCEPTION_MISSING" => Error, Interception, doc::TEMPLATE_VMS_UNREACHABLE,
        "Envoy has an interception listener but no traffic is redirected to it",
        "Run the agent with --interception=enforce (the shipped unit does), or set up the redirect rules; check with `sudo iptables -t nat -S`.";
    /// Raised when: the outbound redirect does not exclude the Envoy user with `--uid-owner`.
    InterceptionLoop = "INTERCEPTION_LOOP" => Error, Interception, doc::PROXY_NOT_CONNECTING,
        "Outbound redirection does not exclude the Envoy user, so Envoy's own traffic loops back to it",
        "Add `-m owner --uid-owner <envoy uid> -j RETURN` before the redirect rules (the agent's enforce mode does).";
    /// Raised when: some listener VIP is covered by no redirect rule; the detail lists them.
    ServiceNotIntercepted = "SERVICE_NOT_INTERCEPTED" => Error, Interception, doc::TEMPLATE_VMS_UNREACHABLE,
        "Some service VIPs are not redirected to Envoy",
        "Traffic to these VIPs bypasses Envoy. Run the agent in enforce mode, or add the VIPs to the redirect chain (SERVICE_PROXY_SERVICE_CIDRS or ISTIO_OUTPUT).";
    /// Raised when: no inbound redirect exists for one of the serving ports.
    InboundPortNotIntercepted = "INBOUND_PORT_NOT_INTERCEPTED" => Error, Interception, doc::INBOUND_UNREACHABLE,
        "A serving port is not redirected to Envoy",
        "Inbound traffic to this port bypasses Envoy. Run the agent in enforce mode, or add the port to SERVICE_PROXY_INBOUND.";
    /// Raised when: a DROP or REJECT rule matches a serving port before its redirect.
    InboundPortBlocked = "INBOUND_PORT_BLOCKED" => Warning, Interception, doc::INBOUND_UNREACHABLE,
        "A DROP or REJECT rule matches a serving port before its redirect",
        "Remove or reorder the rule that drops traffic to the serving port.";
    /// Raised when: `iptables` or `ip6tables` is missing or fails (e.g. IPv6 modules absent, for
    /// which the guide says: reboot and rerun the setup).
    IptablesUnavailable = "IPTABLES_UNAVAILABLE" => Error, Interception, doc::SERVICES_UNREACHABLE,
        "iptables is missing or failing",
        "Install iptables; if ip6tables fails because IPv6 modules are missing, reboot the VM and rerun the setup (VMs created from the Google Cloud console can lack them until reboot).";
    /// Raised when: a serving port belongs to a protocol where the server speaks first (e.g. 3306,
    /// MySQL), which the mesh does not support.
    ServerFirstProtocol = "SERVER_FIRST_PROTOCOL" => Warning, Configuration, doc::SERVER_FIRST,
        "A serving port carries a server-speaks-first protocol, which the mesh does not support",
        "Do not route server-first protocols (MySQL, SMTP, ...) through the mesh; remove the port from serving-ports.";
    /// Raised when: part of a cluster's endpoints are unhealthy, so traffic may not go where it best
    /// should.
    EndpointsUnhealthy = "ENDPOINTS_UNHEALTHY" => Warning, Endpoints, doc::SUBOPTIMAL_DISTRIBUTION,
        "Some endpoints of a cluster are unhealthy",
        "Traffic still flows, but may go to farther backends. Check the backend service's health check and the unhealthy backends.";
    /// Raised when: **99 % or more** of a cluster's endpoints are unhealthy, so health is ignored.
    EndpointsPanic = "ENDPOINTS_PANIC" => Error, Endpoints, doc::MOST_ENDPOINTS_UNHEALTHY,
        "99% or more of a cluster's endpoints are unhealthy, so health is ignored",
        "The data plane now spreads traffic over all endpoints, healthy or not. Fix the backends or their health check.";
    /// Raised when: guest-attribute requests get 403 from the metadata server.
    GuestAttributesDisabled = "GUEST_ATTRIBUTES_DISABLED" => Warning, Metadata, doc::GUEST_ATTRIBUTES,
        "Guest attributes are disabled on this VM",
        "Set the metadata key enable-guest-attributes=TRUE on the VM or its instance template (`gcloud compute instances add-metadata VM --metadata=enable-guest-attributes=TRUE`).";
    /// Raised when: no answer from the metadata server (the VM is not on Compute Engine, or the
    /// server is down).
    MetadataUnreachable = "METADATA_UNREACHABLE" => Error, Metadata, doc::GUEST_ATTRIBUTES,
        "The metadata server does not answer",
        "The agent must run on Compute Engine, where metadata.google.internal answers; check the VM's network configuration and DNS.";
    /// Raised when: the VM's service account lacks `trafficdirector.networks.getConfigs` (error), or
    /// `trafficdirector.networks.reportMetrics` / `logging.logEntries.create` (reported as
    /// warning); the detail names the account and the permissions ([§10](#10-project-side-checks)).
    IamPermissionMissing = "IAM_PERMISSION_MISSING" => Error, Project, doc::PROXY_NOT_CONNECTING,
        "The VM's service account lacks permissions Cloud Service Mesh needs",
        "Grant the VM's service account roles/trafficdirector.client (and roles/logging.logWriter for Cloud Logging) on the project: `gcloud projects add-iam-policy-binding PROJECT --member=serviceAccount:ACCOUNT --role=roles/trafficdirector.client`.";
    /// Raised when: the Traffic Director API is off in the project (Envoy's stream closed with 7 and
    /// "has not been used in project ... or it is disabled", or Service Usage reports `DISABLED`).
    ControlPlaneApiDisabled = "CONTROL_PLANE_API_DISABLED" => Error, Project, doc::PROXY_NOT_CONNECTING,
        "The Traffic Director API is not enabled in the project",
        "Enable it: `gcloud services enable trafficdirector.googleapis.com --project PROJECT`.";
    /// Raised when: the control plane's view of this node (CSDS) has a resource `STALE` past a grace
    /// period, `NOT_SENT`, `ERROR` or `NACKED`, or a version Envoy does not have; the detail names
    /// the type, resource and status. Severity: warning (error for `ERROR` / `NACKED`).
    XdsNotSynced = "XDS_NOT_SYNCED" => Warning, Project, doc::CONFIG_ERRORS_IN_LOG,
        "The control plane's view of this proxy differs from what Envoy has",
        "Compare `curl localhost:15000/config_dump` with the control plane's view (the detail names the resource); a NACKED resource is rejected configuration to fix, a STALE or NOT_SENT one means the control plane has not delivered it.";
}

impl FindingId {
    pub fn from_name(name: &str) -> Option<FindingId> {
        FindingId::ALL
            .iter()
            .copied()
            .find(|id| id.as_str() == name)
    }
}

impl fmt::Display for FindingId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One diagnosed fault: docs/contract.md#4-findings's `{id, severity, summary, detail, remediation, doc}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub id: FindingId,
    pub severity: Severity,
    pub summary: String,
    pub detail: String,
    pub remediation: String,
    pub doc: String,
}

impl Finding {
    /// A finding with the catalogue's severity, summary, remediation and doc, and this evidence.
    pub fn new(id: FindingId, detail: impl Into<String>) -> Self {
        Finding {
            id,
            severity: id.severity(),
            summary: id.default_summary().to_owned(),
            detail: detail.into(),
            remediation: id.default_remediation().to_owned(),
            doc: id.doc().to_owned(),
        }
    }

    pub fn with_summary(mut self, summary: impl Into<String>) -> Self {
        self.summary = summary.into();
        self
    }

    pub fn with_remediation(mut self, remediation: impl Into<String>) -> Self {
        self.remediation = remediation.into();
        self
    }
}

/// docs/contract.md#4-2-health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Health {
    Ok,
    Degraded,
    Failing,
}

impl Health {
    pub fn of<'a>(findings: impl IntoIterator<Item = &'a Finding>) -> Health {
        let mut health = Health::Ok;
        for f in findings {
            match f.severity {
                Severity::Error => return Health::Failing,
                Severity::Warning => health = Health::Degraded,
                Severity::Info => {}
            }
        }
        health
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Health::Ok => "OK",
            Health::Degraded => "DEGRADED",
            Health::Failing => "FAILING",
        }
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Errors first, then warnings, then info; by ID within a severity. Used for the `findings`
/// attribute and for reports, so the order is stable.
pub fn sort_findings(findings: &mut [Finding]) {
    findings.sort_by_key(|a| (a.severity, a.id));
}

/// The `findings` guest-attribute value: IDs, errors first, comma-separated, each once.
pub fn findings_attribute(findings: &[Finding]) -> String {
    let mut ids: Vec<(Severity, FindingId)> = findings.iter().map(|f| (f.severity, f.id)).collect();
    ids.sort();
    ids.dedup_by_key(|(_, id)| *id);
    ids.iter()
        .map(|(_, id)| id.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialized_ids_match_names() {
        for id in FindingId::ALL {
            let json = serde_json::to_string(id).unwrap();
            assert_eq!(json, format!("\"{}\"", id.as_str()));
            assert_eq!(FindingId::from_name(id.as_str()), Some(*id));
        }
    }

    fn doc_file(name: &str) -> String {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("docs")
            .join(name);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// Each finding's guide section is a real anchor of docs/troubleshooting-guide.md.
    #[test]
    fn every_guide_section_exists() {
        let guide = doc_file("troubleshooting-guide.md");
        for id in FindingId::ALL {
            let anchor = format!("<a id=\"{}\"></a>", id.guide_anchor());
            assert!(guide.contains(&anchor), "{id}: no {anchor} in the guide");
        }
    }

    #[test]
    fn every_finding_has_a_group() {
        for group in CheckGroup::ALL {
            let _ = group.title();
        }
        assert!(
            FindingId::ALL
                .iter()
                .all(|id| CheckGroup::ALL.contains(&id.group()))
        );
    }

    #[test]
    fn health_and_attribute_order() {
        let w = Finding::new(FindingId::EndpointsUnhealthy, "c1: 1 of 3");
        let e = Finding::new(FindingId::EnvoyNotRunning, "");
        let e2 = Finding::new(FindingId::EnvoyNotRunning, "again");
        assert_eq!(Health::of([&w]), Health::Degraded);
        assert_eq!(Health::of([&w, &e]), Health::Failing);
        assert_eq!(Health::of([]), Health::Ok);
        assert_eq!(
            findings_attribute(&[w.clone(), e.clone(), e2]),
            "ENVOY_NOT_RUNNING,ENDPOINTS_UNHEALTHY"
        );
        let mut v = vec![w, e];
        sort_findings(&mut v);
        assert_eq!(v[0].id, FindingId::EnvoyNotRunning);
    }
}
