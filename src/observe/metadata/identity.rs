//! The VM's identity, read once: project id and number, instance id, zone, network and the
//! service account's scopes cannot change while the VM runs (network and scopes are changed
//! only on a stopped VM), so the daemon asks for them until it has them all, keeps them, and
//! afterwards polls only the `gce-service-proxy` attribute: one request a poll instead of seven.
//! A reload (SIGHUP) forgets them, so an operator can make the agent look again.

use std::sync::Mutex;

use super::*;

/// What does not change while the VM runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    pub instance_id: u64,
    pub zone: String,
    pub project_id: String,
    pub project_number: u64,
    pub network: NetworkRef,
    pub scopes: Vec<String>,
}

impl Identity {
    /// The identity inside a full read, when every item of it was read (a failed network or
    /// scopes read is not kept: it is asked again at the next read).
    pub fn of(vm: &VmMetadata) -> Option<Identity> {
        Some(Identity {
            instance_id: vm.instance_id,
            zone: vm.zone.clone(),
            project_id: vm.project_id.clone(),
            project_number: vm.project_number,
            network: vm.network.as_ref().ok()?.clone(),
            scopes: vm.scopes.as_ref().ok()?.clone(),
        })
    }

    /// The whole [`VmMetadata`] with this identity and a fresh `gce-service-proxy` read.
    pub fn with_service_proxy(
        &self,
        service_proxy: Result<Option<ServiceProxyConfig>, MetadataError>,
    ) -> VmMetadata {
        VmMetadata {
            instance_id: self.instance_id,
            zone: self.zone.clone(),
            project_id: self.project_id.clone(),
            project_number: self.project_number,
            network: Ok(self.network.clone()),
            scopes: Ok(self.scopes.clone()),
            service_proxy,
        }
    }
}

/// Whether a failed `gce-service-proxy` read says the server as a whole did not answer as
/// the metadata server (down, hung, not HTTP, no flavor, an error status), as opposed to the
/// value being absent or unusable. Before the identity was kept, the same fault failed the
/// identity reads of that poll and the snapshot carried the error (`METADATA_UNREACHABLE`);
/// the one request a poll still makes stands for the server, so it still does.
pub fn is_server_failure(e: &MetadataError) -> bool {
    e.is_unavailable() || matches!(e, MetadataError::Status { .. })
}

/// The kept identity and a generation: [`forget`](Self::forget) moves the generation, so a
/// read that was under way when the operator asked to look again is not kept.
#[derive(Debug, Default)]
pub struct KeptIdentity {
    state: Mutex<(u64, Option<Identity>)>,
}

impl KeptIdentity {
    /// The kept identity and the generation it belongs to.
    fn get(&self) -> (u64, Option<Identity>) {
        match self.state.lock() {
            Ok(s) => (s.0, s.1.clone()),
            // A poisoned lock (a panic while holding it, which nothing here does): read it all.
            Err(_) => (0, None),
        }
    }

    /// Keeps `identity` unless [`forget`](Self::forget) was called since `generation`.
    fn keep(&self, generation: u64, identity: Identity) {
        if let Ok(mut s) = self.state.lock()
            && s.0 == generation
        {
            s.1 = Some(identity);
        }
    }

    /// The next read asks for the whole identity again (SIGHUP).
    pub fn forget(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.0 = s.0.wrapping_add(1);
            s.1 = None;
        }
    }

    /// Whether an identity is kept now.
    pub fn is_kept(&self) -> bool {
        self.get().1.is_some()
    }

    /// What [`MetadataClient::vm_metadata`] returns, with the identity read only until it has
    /// been read whole once: afterwards only `gce-service-proxy` is asked for, and a server
    /// failure on it is the read's error (see [`is_server_failure`]).
    pub async fn vm_metadata(&self, client: &MetadataClient) -> Result<VmMetadata, MetadataError> {
        let (generation, kept) = self.get();
        match kept {
            Some(identity) => {
                let service_proxy = client.service_proxy().await;
                match service_proxy {
                    Err(e) if is_server_failure(&e) => Err(e),
                    sp => Ok(identity.with_service_proxy(sp)),
                }
            }
            None => {
                let vm = client.vm_metadata().await?;
                if let Some(identity) = Identity::of(&vm) {
                    self.keep(generation, identity);
                }
                Ok(vm)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm() -> VmMetadata {
        VmMetadata {
            instance_id: 7,
            zone: "us-central1-a".into(),
            project_id: "p".into(),
            project_number: 12,
            network: Ok(NetworkRef {
                project_number: 12,
                name: "default".into(),
            }),
            scopes: Ok(vec![CLOUD_PLATFORM_SCOPE.into()]),
            service_proxy: Ok(None),
        }
    }

    #[test]
    fn an_identity_is_kept_only_when_read_whole() {
        let full = vm();
        let id = Identity::of(&full).unwrap();
        assert_eq!(id.with_service_proxy(Ok(None)), full);
        let mut no_net = vm();
        no_net.network = Err(MetadataError::NotFound {
            path: "instance/network-interfaces/0/network".into(),
        });
        assert_eq!(Identity::of(&no_net), None);
        let mut no_scopes = vm();
        no_scopes.scopes = Err(MetadataError::Status {
            path: "instance/service-accounts/default/scopes".into(),
            status: 500,
            body: String::new(),
        });
        assert_eq!(Identity::of(&no_scopes), None);
        // No service account is a fact, kept like any other.
        let mut none = vm();
        none.scopes = Ok(Vec::new());
        assert!(Identity::of(&none).is_some());
    }

    #[test]
    fn forgetting_drops_a_read_under_way() {
        let kept = KeptIdentity::default();
        let id = Identity::of(&vm()).unwrap();
        let (generation, _) = kept.get();
        kept.keep(generation, id.clone());
        assert!(kept.is_kept());
        kept.forget();
        assert!(!kept.is_kept());
        // A read begun before the reload ends after it: what it read is not kept.
        kept.keep(generation, id.clone());
        assert!(!kept.is_kept());
        let (now, _) = kept.get();
        kept.keep(now, id);
        assert!(kept.is_kept());
    }

    #[test]
    fn server_failures_are_told_from_value_faults() {
        let status = |status| MetadataError::Status {
            path: "x".into(),
            status,
            body: String::new(),
        };
        assert!(is_server_failure(&status(503)));
        assert!(is_server_failure(&status(429)));
        assert!(is_server_failure(&status(403)));
        assert!(is_server_failure(&MetadataError::NotMetadataServer {
            host: "h".into(),
            status: 200
        }));
        assert!(!is_server_failure(&MetadataError::NotFound {
            path: "x".into()
        }));
        assert!(!is_server_failure(&malformed("x", "bad json".into())));
        assert!(!is_server_failure(&MetadataError::TooLarge {
            path: "x".into(),
            limit: 1
        }));
    }
}
