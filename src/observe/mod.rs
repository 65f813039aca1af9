//! Observation: everything the agent reads from the VM, each source behind its own module with
//! typed results and its own error type. No diagnosis here: [`Observer::snapshot`] gathers one
//! [`Snapshot`] of plain values that the checks in `diagnose` judge.

pub mod admin_trust;
pub mod control_plane;
pub mod envoy_admin;
pub mod envoy_log;
pub mod files;
pub mod http;
pub mod iptables;
pub mod log_files;
pub mod log_follower;
pub mod metadata;
mod netlink;
pub mod nf_generation;
pub mod own_process;
pub mod own_traffic;
pub mod procfs;
pub mod project;
pub mod sock_diag;
pub mod token;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::config::{InterceptionMode, Settings, UserSpec};
use control_plane::Reachability;
use envoy_admin::{
    AdminClient, AdminError, ClusterStatus, DynamicListener, EnvoyStats, ListenerSummary,
    ServerInfo,
};
use iptables::{Family, IptablesError, Ruleset, SaveCache, Tools};
use metadata::{MetadataClient, MetadataError, VmMetadata};
use procfs::{EnvoyProcess, ProcError};

pub use crate::contract::DEFAULT_PROXY_PORT;
/// Admin bodies: `/server_info` alone is ~125 KB (every extension listed); config dumps of big
/// meshes are megabytes.
pub const ADMIN_MAX_BODY: usize = 64 << 20;
/// `/stats` is read through an anchored filter: a few lines. A bigger answer is not Envoy's.
pub const ADMIN_STATS_MAX_BODY: usize = 1 << 20;

/// The iptables state as read for verification.
#[derive(Debug, Clone)]
pub struct IptablesView {
    /// Shared with the save cache: a 1,000-rule ruleset is a megabyte, not to be copied each
    /// poll.
    pub v4: Result<Arc<Ruleset>, IptablesError>,
    /// Read only when there is something IPv6 to judge.
    pub v6: Option<Result<Arc<Ruleset>, IptablesError>>,
}

/// Values derived from several sources, resolved once per snapshot so every check agrees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The UID excluded from interception, and where it came from: the admin socket's owner
    /// when the admin is trusted, else `--envoy-user` or the user `envoy` (for verification
    /// only: nothing is programmed from an untrusted admin).
    pub envoy_uid: Option<u32>,
    pub envoy_uid_source: String,
    /// Whether the admin's answers may be acted on (docs/contract.md#11-trust).
    pub admin_trust: admin_trust::AdminTrust,
    pub proxy_port: u16,
    pub serving_ports: Vec<u16>,
}

/// One observation of the VM. Every source's result is kept, error included: a check decides
/// whether an error is a finding or a reason it could not check.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub taken_at: SystemTime,
    pub interception_mode: InterceptionMode,
    pub processes: Result<Vec<EnvoyProcess>, ProcError>,
    /// The Envoy process serving the admin port, when it can be told.
    pub admin_pid: Option<u32>,
    pub server_info: Result<ServerInfo, AdminError>,
    /// Shared with the observer's last read (reused while Envoy's listener counters stand
    /// still).
    pub listeners: Result<Arc<Vec<DynamicListener>>, AdminError>,
    pub listener_summary: Option<ListenerSummary>,
    pub clusters: Result<Vec<ClusterStatus>, AdminError>,
    pub stats: Result<EnvoyStats, AdminError>,
    pub vm: Result<VmMetadata, MetadataError>,
    /// `None` when interception is off.
    pub iptables: Option<IptablesView>,
    /// `None` when not checked this time (it costs a DNS query and a connection).
    pub control_plane: Option<Reachability>,
    /// Whether guest attributes can be written (the daemon's publisher knows; `doctor` probes).
    pub guest_attributes: GuestAttributesState,
    pub resolved: Resolved,
    /// The configured access-log path with the facts of it and the directories above it;
    /// `None` when no path is configured.
    pub access_log: Option<files::PathChain>,
    /// The groups of the Envoy serving the admin, when it runs as `resolved.envoy_uid`
    /// (the access-log check needs them); `None` when unknown.
    pub envoy_groups: Option<Vec<u32>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GuestAttributesState {
    #[default]
    Unknown,
    Enabled,
    /// The metadata server answered 403 `Guest attributes endpoint access is disabled.`
    Disabled,
}

impl Snapshot {
    /// The listener VIPs as strings, for reports.
    pub fn listener_vips(&self) -> Vec<String> {
        self.listener_summary
            .as_ref()
            .map(|s| s.vips.iter().map(ToString::to_string).collect())
            .unwrap_or_default()
    }

    /// `proxy-state` as published: Envoy's state, or NOT_RUNNING / UNREACHABLE.
    pub fn proxy_state(&self) -> String {
        match (&self.server_info, &self.processes) {
            (Ok(info), _) => info.state.as_str().to_owned(),
            (Err(e), Ok(p))
                if p.is_empty()
                    && !e.is_unreachable_but_accepted()
                    && !self.resolved.admin_trust.something_listens() =>
            {
                "NOT_RUNNING".into()
            }
            _ => "UNREACHABLE".into(),
        }
    }

    pub fn proxy_version(&self) -> Option<&str> {
        self.server_info.as_ref().ok().map(|i| i.version.as_str())
    }
}

/// Reads of the dynamic listeners are reused at most this long, whatever the counters say.
pub const LISTENERS_MAX_AGE: Duration = Duration::from_secs(60);

/// What a read of the dynamic listeners was made under.
#[derive(Debug, PartialEq, Eq)]
struct ListenersKey {
    /// Every Envoy process (PID, start time): a restart, a hot restart or a second Envoy
    /// changes it.
    envoys: Vec<(u32, u64)>,
    version: String,
    fingerprint: std::collections::BTreeMap<String, String>,
}

#[derive(Debug)]
struct KeptListeners {
    key: ListenersKey,
    listeners: Arc<Vec<DynamicListener>>,
    read_at: std::time::Instant,
}

/// Every Envoy process as (PID, start time): a restart, a hot restart or a second Envoy changes
/// it. `None` when the processes cannot be told (none found, or /proc unreadable): then
/// nothing read from the admin is reused.
fn envoy_ids(processes: &Result<Vec<EnvoyProcess>, ProcError>) -> Option<Vec<(u32, u64)>> {
    match processes {
        Ok(ps) if !ps.is_empty() => Some(ps.iter().map(|p| (p.pid, p.start_ticks)).collect()),
        _ => None,
    }
}

/// The last `/server_info` of the Envoy processes it was read from.
#[derive(Debug)]
struct KeptServerInfo {
    /// [`envoy_ids`] when it was read.
    envoys: Vec<(u32, u64)>,
    info: ServerInfo,
    read_at: std::time::Instant,
}

/// Reads the VM. Holds the clients; cheap to keep for the daemon's life.
pub struct Observer {
    pub admin: AdminClient,
    /// The same admin with the small cap of `/stats`.
    admin_stats: AdminClient,
    pub metadata: MetadataClient,
    /// The VM's identity, read whole once and then only `gce-service-proxy` each poll; the
    /// daemon's reload forgets it.
    pub vm_identity: metadata::KeptIdentity,
    pub proc_root: PathBuf,
    pub iptables: Tools,
    /// The last save of each family, reused while nf_tables' generation stands still.
    pub iptables_saves: SaveCache,
    listeners_kept: std::sync::Mutex<Option<KeptListeners>>,
    server_info_kept: std::sync::Mutex<Option<KeptServerInfo>>,
    /// The last parse of the listeners, reused when a re-read brings the same bytes.
    pub listener_parses: envoy_admin::ListenerParses,
    settings: Settings,
}

impl Observer {
    pub fn new(settings: &Settings) -> Observer {
        let admin = AdminClient::new(
            &settings.envoy_admin,
            Duration::from_secs(5),
            ADMIN_MAX_BODY,
        );
        Observer {
            // One connection for both: a poll's reads are made one after the other.
            admin_stats: admin.with_max_body(ADMIN_STATS_MAX_BODY),
            admin,
            metadata: MetadataClient::new(&settings.metadata_host, Duration::from_secs(3)),
            vm_identity: metadata::KeptIdentity::default(),
            proc_root: PathBuf::from("/proc"),
            iptables: Tools::system(),
            iptables_saves: SaveCache::default(),
            listeners_kept: std::sync::Mutex::new(None),
            server_info_kept: std::sync::Mutex::new(None),
            listener_parses: envoy_admin::ListenerParses::default(),
            settings: settings.clone(),
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// One read of our guest-attribute namespace: tells whether guest attributes are enabled
    /// without writing anything (`doctor` uses it; the daemon learns it from its writes).
    pub async fn probe_guest_attributes(&self) -> GuestAttributesState {
        match self
            .metadata
            .list_guest_attributes(crate::contract::guest_attributes::NAMESPACE)
            .await
        {
            Ok(_) => GuestAttributesState::Enabled,
            Err(MetadataError::GuestAttributesDisabled) => GuestAttributesState::Disabled,
            Err(_) => GuestAttributesState::Unknown,
        }
    }

    /// Envoy's dynamic listeners: the last read again when Envoy is the same process, its
    /// version the same and its listener manager's counters unchanged (and the last read is
    /// younger than [`LISTENERS_MAX_AGE`]); else read and parsed (a megabyte for 1,000 VIPs).
    async fn listeners(
        &self,
        processes: &Result<Vec<EnvoyProcess>, ProcError>,
        info: &Result<ServerInfo, AdminError>,
        stats: &Result<EnvoyStats, AdminError>,
    ) -> Result<Arc<Vec<DynamicListener>>, AdminError> {
        let key = match (envoy_ids(processes), info, stats) {
            (Some(envoys), Ok(info), Ok(stats)) => {
                stats.listener_fingerprint().map(|f| ListenersKey {
                    envoys,
                    version: info.version.clone(),
                    fingerprint: f.clone(),
                })
            }
            _ => None,
        };
        if let Some(key) = &key
            && let Ok(kept) = self.listeners_kept.lock()
            && let Some(k) = kept.as_ref()
            && k.key == *key
            && k.read_at.elapsed() < LISTENERS_MAX_AGE
        {
            return Ok(Arc::clone(&k.listeners));
        }
        let read = self
            .admin
            .dynamic_listeners_with(&self.listener_parses)
            .await;
        if let Ok(mut kept) = self.listeners_kept.lock() {
            *kept = match (key, &read) {
                (Some(key), Ok(l)) => Some(KeptListeners {
                    key,
                    listeners: Arc::clone(l),
                    read_at: std::time::Instant::now(),
                }),
                _ => None,
            };
        }
        read
    }

    /// Envoy's `/server_info`. Of what it says, only the state and the uptime change while the
    /// same process runs (version, command line and node are fixed at its start), and it is
    /// ~125 KB (the node lists every compiled-in extension): read and parsed every poll, it was
    /// most of what a poll allocates, and glibc kept the heap at that poll's peak (issue 13).
    /// So it is read when the Envoy processes are new; while they stand, `/ready` (a few bytes)
    /// gives the state and the uptime is the last read's plus the time since. Read whole again
    /// when `/ready` does not answer with a known state, and whenever the processes cannot be
    /// told (no key).
    async fn server_info(
        &self,
        processes: &Result<Vec<EnvoyProcess>, ProcError>,
    ) -> Result<ServerInfo, AdminError> {
        let envoys = envoy_ids(processes);
        let kept = envoys.as_ref().and_then(|e| {
            let kept = self.server_info_kept.lock().ok()?;
            kept.as_ref()
                .filter(|k| k.envoys == *e)
                .map(|k| (k.info.clone(), k.read_at))
        });
        if let Some((mut info, read_at)) = kept {
            match self.admin.ready().await {
                Ok(r) if !matches!(r.state, envoy_admin::ServerState::Other(_)) => {
                    info.state = r.state;
                    let since = read_at.elapsed();
                    info.uptime_current_epoch =
                        info.uptime_current_epoch.and_then(|u| u.checked_add(since));
                    info.uptime_all_epochs =
                        info.uptime_all_epochs.and_then(|u| u.checked_add(since));
                    return Ok(info);
                }
                Err(e) if e.is_unreachable() => {
                    self.forget_server_info();
                    return Err(e);
                }
                // Another answer: the whole read says what it is.
                _ => {}
            }
        }
        let read = self.admin.server_info().await;
        match (envoys, &read) {
            (Some(envoys), Ok(info)) => {
                if let Ok(mut kept) = self.server_info_kept.lock() {
                    *kept = Some(KeptServerInfo {
                        envoys,
                        info: info.clone(),
                        read_at: std::time::Instant::now(),
                    });
                }
            }
            _ => self.forget_server_info(),
        }
        read
    }

    fn forget_server_info(&self) {
        if let Ok(mut kept) = self.server_info_kept.lock() {
            *kept = None;
        }
    }

    /// Re-reads iptables into `snap` (after the agent changed the rules itself).
    pub async fn refresh_iptables(&self, snap: &mut Snapshot) {
        if let Some(view) = snap.iptables.as_mut() {
            view.v4 = self.iptables_saves.save(&self.iptables, Family::V4).await;
            if view.v6.is_some() {
                view.v6 = Some(self.iptables_saves.save(&self.iptables, Family::V6).await);
            }
        }
    }

    /// One snapshot; sources are read concurrently and each has its own deadline.
    pub async fn snapshot(&self, check_control_plane: bool) -> Snapshot {
        let processes = procfs::envoy_processes(&self.proc_root);
        // The admin's socket is read before and after its answers (docs/contract.md#11-trust).
        let trust_before = self.admin_trust(&processes);
        let admin = async {
            let info = self.server_info(&processes).await;
            if let Err(e) = &info
                && e.is_unreachable()
            {
                // Nothing else will answer either: don't wait three more timeouts.
                let err = e.clone();
                return (info, Err(err.clone()), Err(err.clone()), Err(err));
            }
            // `/stats` first: it says whether the listeners can have changed. The two answers
            // that can be megabytes are read one after the other, and `/stats` has a small
            // cap, so a hostile or broken admin costs about one body cap of memory at a time
            // (a hanging endpoint costs one more deadline per cycle, well within the watchdog).
            let stats = self.admin_stats.stats().await;
            let listeners = self.listeners(&processes, &info, &stats).await;
            let clusters = self.admin.clusters().await;
            // The poll's reads are done: Envoy is not held to an idle connection until the next.
            self.admin.release();
            (info, listeners, clusters, stats)
        };
        let reach = async {
            if check_control_plane {
                Some(
                    control_plane::check(
                        &self.settings.control_plane,
                        Duration::from_secs(3),
                        Duration::from_secs(3),
                    )
                    .await,
                )
            } else {
                None
            }
        };
        let ((server_info, listeners, clusters, stats), vm, control_plane) =
            tokio::join!(admin, self.vm_identity.vm_metadata(&self.metadata), reach);

        let listener_summary = listeners
            .as_ref()
            .ok()
            .map(|l| envoy_admin::summarize_listeners(l));
        let has_v6 = listener_summary
            .as_ref()
            .is_some_and(|s| s.vips.iter().any(|v| matches!(v, ipnet::IpNet::V6(_))));
        let iptables = if self.settings.interception == InterceptionMode::Off {
            None
        } else {
            let v4 = self.iptables_saves.save(&self.iptables, Family::V4).await;
            let v6 = if has_v6 {
                Some(self.iptables_saves.save(&self.iptables, Family::V6).await)
            } else {
                None
            };
            Some(IptablesView { v4, v6 })
        };

        let admin_pid = match (&processes, &server_info) {
            (Ok(p), _) if p.len() == 1 => p.first().map(|p| p.pid),
            (Ok(p), _) if !p.is_empty() => {
                let pids: Vec<u32> = p.iter().map(|p| p.pid).collect();
                procfs::process_listening_on(&self.proc_root, self.settings.envoy_admin.port, &pids)
            }
            _ => None,
        };
        let trust = admin_trust::both(trust_before, self.admin_trust(&processes));
        let resolved = resolve(&self.settings, trust, &server_info, &vm);
        let access_log = files::configured_access_log(&server_info, &vm)
            .map(|p| files::PathChain::read(&p, files::stat_path));
        let envoy_groups = self.envoy_groups(&processes, admin_pid, resolved.envoy_uid);
        Snapshot {
            taken_at: SystemTime::now(),
            interception_mode: self.settings.interception,
            processes,
            admin_pid,
            server_info,
            listeners,
            listener_summary,
            clusters,
            stats,
            vm,
            iptables,
            control_plane,
            guest_attributes: GuestAttributesState::Unknown,
            resolved,
            access_log,
            envoy_groups,
        }
    }

    /// The groups of the admin's process, when it runs as the UID Envoy is taken to run as
    /// (another process's groups would say nothing about Envoy's access).
    fn envoy_groups(
        &self,
        processes: &Result<Vec<EnvoyProcess>, ProcError>,
        admin_pid: Option<u32>,
        envoy_uid: Option<u32>,
    ) -> Option<Vec<u32>> {
        let uid = envoy_uid?;
        let pid = admin_pid?;
        let owner = processes.as_ref().ok()?.iter().find(|p| p.pid == pid)?.uid;
        if owner != uid {
            return None;
        }
        procfs::process_groups(&self.proc_root, pid)
    }
}

impl Observer {
    /// The verdict on the socket serving `--envoy-admin` now.
    fn admin_trust(
        &self,
        processes: &Result<Vec<EnvoyProcess>, ProcError>,
    ) -> admin_trust::AdminTrust {
        let admin = &self.settings.envoy_admin;
        let user = match &self.settings.envoy_user {
            Some(UserSpec::Uid(uid)) => admin_trust::EnvoyUser::Given(*uid),
            Some(UserSpec::Name(name)) => match procfs::resolve_user(name) {
                Some(uid) => admin_trust::EnvoyUser::Given(uid),
                None => admin_trust::EnvoyUser::Unknown(crate::text::strip_control(name)),
            },
            None => admin_trust::EnvoyUser::Default {
                process_uids: processes
                    .as_ref()
                    .ok()
                    .map(|ps| ps.iter().map(|p| p.uid).collect()),
                user_envoy: procfs::resolve_user("envoy"),
            },
        };
        let shown = format!("{}:{}", admin.host, admin.port);
        match procfs::listen_sockets(&self.proc_root, admin.port) {
            Ok(sockets) => admin_trust::judge(
                &shown,
                &admin_trust::admin_addresses(&admin.host),
                &sockets,
                &user,
            ),
            Err(e) => admin_trust::AdminTrust::Untrusted {
                owner: None,
                why: format!("cannot tell who owns the socket of {shown}: {e}"),
            },
        }
    }
}

/// docs/contract.md#2-command-line's precedence for the Envoy UID, proxy port and serving ports; docs/contract.md#11-trust: the UID is
/// the trusted admin socket's owner.
fn resolve(
    settings: &Settings,
    admin_trust: admin_trust::AdminTrust,
    server_info: &Result<ServerInfo, AdminError>,
    vm: &Result<VmMetadata, MetadataError>,
) -> Resolved {
    let service_proxy = vm
        .as_ref()
        .ok()
        .and_then(|vm| vm.service_proxy.as_ref().ok())
        .and_then(Option::as_ref);

    let (envoy_uid, envoy_uid_source) = match (&admin_trust, &settings.envoy_user) {
        (admin_trust::AdminTrust::Trusted { uid, .. }, _) => {
            (Some(*uid), "owner of the admin socket".to_owned())
        }
        (_, Some(UserSpec::Uid(uid))) => (Some(*uid), "--envoy-user".to_owned()),
        (_, Some(UserSpec::Name(name))) => {
            (procfs::resolve_user(name), format!("--envoy-user {name}"))
        }
        // Never the owner of a process merely named envoy: anyone can name a process so.
        (admin_trust::AdminTrust::Untrusted { why, .. }, None) => {
            match procfs::resolve_user("envoy") {
                Some(uid) => (Some(uid), "user envoy".to_owned()),
                None => (None, why.clone()),
            }
        }
    };

    let node_port = server_info.as_ref().ok().and_then(|i| {
        i.node
            .metadata_str(crate::contract::node_metadata::INTERCEPTION_PORT)
            .and_then(|p| p.parse::<u16>().ok())
            .filter(|p| *p != 0)
    });
    let proxy_port = settings
        .proxy_port
        .or_else(|| service_proxy.and_then(|sp| sp.proxy_spec.proxy_port))
        .or(node_port)
        .unwrap_or(DEFAULT_PROXY_PORT);

    let serving_ports = settings
        .serving_ports
        .clone()
        .or_else(|| service_proxy.map(|sp| sp.service.serving_ports.clone()))
        .unwrap_or_default();

    Resolved {
        envoy_uid,
        envoy_uid_source,
        admin_trust,
        proxy_port,
        serving_ports,
    }
}
