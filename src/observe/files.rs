//! File-system facts the checks judge: the owner, group and mode of the configured access-log
//! path and of every directory above it (ACCESS_LOG_NOT_WRITABLE). Read here, at the edge, so
//! `diagnose` judges values in the snapshot and never touches the file system.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::contract::node_metadata;
use crate::observe::envoy_admin::{AdminError, ServerInfo};
use crate::observe::metadata::{MetadataError, VmMetadata};

/// Owner, group and mode of a file, as the permission check needs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileFacts {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    pub is_dir: bool,
}

/// What one `stat` said: `Ok(None)` when the path does not exist, `Err` (the error's text) when
/// it could not be inspected.
pub type StatResult = Result<Option<FileFacts>, String>;

/// The real file system's facts for one path (following symlinks, as Envoy's `open` does).
pub fn stat_path(p: &Path) -> io::Result<Option<FileFacts>> {
    match std::fs::metadata(p) {
        Ok(m) => Ok(Some(FileFacts {
            uid: m.uid(),
            gid: m.gid(),
            mode: m.mode(),
            is_dir: m.is_dir(),
        })),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// A path with the facts of every directory above it, from the root down, then of the path
/// itself. The walk stops where the kernel's would (a directory missing, not a directory, or
/// not inspectable): nothing below it can matter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathChain {
    pub path: String,
    pub stats: Vec<(PathBuf, StatResult)>,
}

impl PathChain {
    /// Reads the chain of `path` through `stat`. A relative path is not read: what it names
    /// depends on Envoy's working directory.
    pub fn read(path: &str, stat: impl Fn(&Path) -> io::Result<Option<FileFacts>>) -> PathChain {
        let mut stats = Vec::new();
        let p = Path::new(path);
        if p.is_absolute() {
            let ancestors: Vec<&Path> = p.ancestors().skip(1).collect();
            let mut walkable = true;
            for dir in ancestors.iter().rev() {
                let s = stat(dir).map_err(|e| e.to_string());
                walkable = matches!(s, Ok(Some(f)) if f.is_dir);
                stats.push((dir.to_path_buf(), s));
                if !walkable {
                    break;
                }
            }
            if walkable {
                stats.push((p.to_path_buf(), stat(p).map_err(|e| e.to_string())));
            }
        }
        PathChain {
            path: path.to_owned(),
            stats,
        }
    }

    /// The facts read for `p`; a path the walk did not reach is an error, never a guess.
    pub fn stat(&self, p: &Path) -> StatResult {
        self.stats
            .iter()
            .find(|(q, _)| q == p)
            .map(|(_, s)| s.clone())
            .unwrap_or_else(|| Err("not observed".into()))
    }
}

/// The configured access-log path: Envoy's node metadata, else (Envoy unreadable) the
/// `gce-service-proxy` metadata that the bootstrap is written from.
pub fn configured_access_log(
    server_info: &Result<ServerInfo, AdminError>,
    vm: &Result<VmMetadata, MetadataError>,
) -> Option<String> {
    match server_info {
        Ok(info) => info.node.metadata_text(node_metadata::ACCESS_LOG_PATH),
        Err(_) => vm
            .as_ref()
            .ok()
            .and_then(|v| v.service_proxy.as_ref().ok())
            .and_then(Option::as_ref)
            .and_then(|sp| sp.proxy_spec.access_log.clone()),
    }
    .filter(|p| !p.trim().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn dir(uid: u32) -> FileFacts {
        FileFacts {
            uid,
            gid: uid,
            mode: 0o755,
            is_dir: true,
        }
    }

    #[test]
    fn chain_stops_where_the_kernel_would() {
        let fs = HashMap::from([("/", dir(0)), ("/var", dir(0))]);
        let stat = |p: &Path| Ok(fs.get(p.to_str().unwrap_or("")).copied());
        let c = PathChain::read("/var/missing/deeper/access.log", stat);
        let read: Vec<&Path> = c.stats.iter().map(|(p, _)| p.as_path()).collect();
        assert_eq!(
            read,
            [Path::new("/"), Path::new("/var"), Path::new("/var/missing")]
        );
        assert_eq!(c.stat(Path::new("/var/missing")), Ok(None));
        assert_eq!(
            c.stat(Path::new("/var/missing/deeper")),
            Err("not observed".into())
        );
        let c = PathChain::read("/var/a.log", stat);
        assert_eq!(c.stats.len(), 3);
        assert_eq!(c.stat(Path::new("/var/a.log")), Ok(None));
        assert!(PathChain::read("relative.log", stat).stats.is_empty());
    }

    #[test]
    fn real_file_system_is_read() {
        let c = PathChain::read("/proc/spa-no-such/access.log", stat_path);
        assert!(matches!(c.stat(Path::new("/proc")), Ok(Some(f)) if f.is_dir));
        assert_eq!(c.stat(Path::new("/proc/spa-no-such")), Ok(None));
    }
}
