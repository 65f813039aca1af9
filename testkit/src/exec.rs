//! Programs the tests run as an unprivileged UID must be reachable by it. A checkout under a
//! private directory (`mktemp -d` makes them 0700) hides the build's binaries and the `.venv`'s
//! Envoy from UID 65534; such a program is hard-linked (copied across file systems) into a
//! world-searchable directory under the temporary directory, keyed by its identity, once.

use std::hash::{Hash, Hasher};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// `program`, or a link to it that every UID can execute.
pub fn reachable_by_all(program: &Path) -> Result<PathBuf> {
    let program = program
        .canonicalize()
        .with_context(|| format!("cannot find {}", program.display()))?;
    if ancestors_searchable(&program) {
        return Ok(program);
    }
    let meta = std::fs::metadata(&program)?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (&program, meta.dev(), meta.ino(), meta.len(), meta.mtime()).hash(&mut h);
    let dir = std::env::temp_dir()
        .join("spa-exec")
        .join(format!("{:016x}", h.finish()));
    let name = program
        .file_name()
        .context("a program without a file name")?;
    let target = dir.join(name);
    if target.exists() {
        return Ok(target);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    for d in [dir.parent().unwrap_or(&dir), dir.as_path()] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))?;
    }
    // Made under a private name and renamed: test processes may race for it.
    // Unique per call: tests in one process link the same program from several threads.
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let tmp = dir.join(format!(
        ".{}.{}.{}",
        name.to_string_lossy(),
        std::process::id(),
        CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let _ = std::fs::remove_file(&tmp);
    if std::fs::hard_link(&program, &tmp).is_err() {
        std::fs::copy(&program, &tmp)
            .with_context(|| format!("copy {} to {}", program.display(), tmp.display()))?;
    }
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
    std::fs::rename(&tmp, &target)?;
    Ok(target)
}

/// Every directory above `path` lets others through (o+x).
fn ancestors_searchable(path: &Path) -> bool {
    path.ancestors()
        .skip(1)
        .all(|d| std::fs::metadata(d).is_ok_and(|m| m.permissions().mode() & 0o001 != 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_program_under_a_private_directory_is_linked_out_of_it() {
        let private = tempfile::tempdir().unwrap();
        std::fs::set_permissions(private.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let prog = private.path().join("prog");
        std::fs::write(&prog, "#!/bin/true\n").unwrap();
        std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o755)).unwrap();
        let out = reachable_by_all(&prog).unwrap();
        assert_ne!(out, prog.canonicalize().unwrap());
        assert!(ancestors_searchable(&out), "{}", out.display());
        assert_eq!(std::fs::read(&out).unwrap(), b"#!/bin/true\n");
        // Twice: the same link.
        assert_eq!(reachable_by_all(&prog).unwrap(), out);
        // Many threads at once, the target removed first (as on a fresh machine).
        std::fs::remove_file(&out).unwrap();
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let prog = prog.clone();
                std::thread::spawn(move || reachable_by_all(&prog))
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().unwrap().unwrap(), out);
        }
        // A reachable one is itself.
        assert_eq!(
            reachable_by_all(Path::new("/bin/sh")).unwrap(),
            Path::new("/bin/sh").canonicalize().unwrap()
        );
    }
}
