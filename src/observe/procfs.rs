//! Envoy processes as /proc shows them: whether Envoy runs at all (`ENVOY_NOT_RUNNING`), its
//! PID and start time (`ENVOY_RESTARTING`), and which UID it runs as, which is the UID the
//! interception rules must exclude (`--envoy-user` defaults to the owner of the Envoy serving
//! `--envoy-admin`).
//!
//! The root is a parameter so tests can point it at a fixture tree. Processes come and go while
//! we read: a process that vanishes mid-scan is skipped, never an error.

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use thiserror::Error;

/// Bound on the command line kept per process.
const CMDLINE_MAX: usize = 4096;
/// Bounds on what one scan reads, so a pathological /proc cannot make a poll cycle hang.
const MAX_PROCESSES: usize = 1_000_000;
const MAX_FDS: usize = 1_000_000;
const MAX_SOCKET_LINES: usize = 1_000_000;
/// `/proc/net/tcp` state code of a listening socket.
const TCP_LISTEN: &str = "0A";

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ProcError {
    #[error("cannot read {path}: {reason}")]
    Unreadable { path: PathBuf, reason: String },
}

/// One running Envoy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvoyProcess {
    pub pid: u32,
    /// Real UID, from `status`.
    pub uid: u32,
    /// `stat` field 22, clock ticks after boot; with the PID it identifies the process across
    /// PID reuse.
    pub start_ticks: u64,
    /// Wall-clock start, from `start_ticks` and `btime`; `None` if `/proc/stat` has no `btime`.
    pub start_time: Option<SystemTime>,
    /// Arguments joined by spaces, invalid UTF-8 replaced, at most 4 KiB.
    pub cmdline: String,
}

/// Every process whose `comm` or `argv[0]` basename is `envoy`, sorted by PID.
pub fn envoy_processes(proc_root: &Path) -> Result<Vec<EnvoyProcess>, ProcError> {
    let entries = fs::read_dir(proc_root).map_err(|e| ProcError::Unreadable {
        path: proc_root.to_path_buf(),
        reason: e.to_string(),
    })?;
    let btime = boot_time(proc_root);
    let hz = clock_ticks_per_second();
    let mut out = Vec::new();
    for entry in entries.take(MAX_PROCESSES).flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some(p) = read_envoy_process(&entry.path(), pid, btime, hz) {
            out.push(p);
        }
    }
    out.sort_by_key(|p| p.pid);
    Ok(out)
}

fn read_envoy_process(dir: &Path, pid: u32, btime: Option<u64>, hz: u64) -> Option<EnvoyProcess> {
    let comm = read_small(&dir.join("comm"), 256)?;
    let comm = String::from_utf8_lossy(&comm);
    let cmdline_raw = read_small(&dir.join("cmdline"), CMDLINE_MAX)?;
    let argv0 = cmdline_raw.split(|b| *b == 0).next().unwrap_or_default();
    let argv0_base = argv0.rsplit(|b| *b == b'/').next().unwrap_or_default();
    if comm.trim_end_matches('\n') != "envoy" && argv0_base != b"envoy" {
        return None;
    }
    let status = read_small(&dir.join("status"), 64 * 1024)?;
    let uid = parse_status_uid(&String::from_utf8_lossy(&status))?;
    let stat = read_small(&dir.join("stat"), 4096)?;
    let start_ticks = parse_stat_start_ticks(&String::from_utf8_lossy(&stat))?;
    let start_time = btime.and_then(|b| start_time(b, start_ticks, hz));
    let args: Vec<&[u8]> = cmdline_raw
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .collect();
    let cmdline = crate::text::lossy_bounded(&args.join(&b' '), CMDLINE_MAX);
    Some(EnvoyProcess {
        pid,
        uid,
        start_ticks,
        start_time,
        cmdline: crate::text::strip_control(&cmdline),
    })
}

/// `btime` + ticks; `None` rather than a panic if hostile numbers overflow.
pub(crate) fn start_time(btime: u64, ticks: u64, hz: u64) -> Option<SystemTime> {
    let since_boot = Duration::from_secs(ticks / hz).checked_add(Duration::from_nanos(
        (ticks % hz).checked_mul(1_000_000_000)? / hz,
    ))?;
    SystemTime::UNIX_EPOCH
        .checked_add(Duration::from_secs(btime))?
        .checked_add(since_boot)
}

/// Reads at most `max` bytes; `None` on any error (the process may be gone).
pub(crate) fn read_small(path: &Path, max: usize) -> Option<Vec<u8>> {
    let f = fs::File::open(path).ok()?;
    let mut buf = Vec::new();
    f.take(u64::try_from(max).unwrap_or(u64::MAX))
        .read_to_end(&mut buf)
        .ok()?;
    Some(buf)
}

/// The real UID: first number of the `Uid:` line.
fn parse_status_uid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|u| u.parse().ok())
}

/// Field 22 of `stat`. The command name (field 2) may hold spaces and parentheses, so fields
/// are counted from the last `)`.
fn parse_stat_start_ticks(stat: &str) -> Option<u64> {
    let after = stat.get(stat.rfind(')')? + 1..)?;
    // after ")" come fields 3 (state), 4, ...: field 22 is the 20th.
    after.split_whitespace().nth(19)?.parse().ok()
}

pub(crate) fn boot_time(proc_root: &Path) -> Option<u64> {
    let f = fs::File::open(proc_root.join("stat")).ok()?;
    BufReader::new(f)
        .lines()
        .take(10_000)
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("btime ").and_then(|v| v.trim().parse().ok()))
}

pub(crate) fn clock_ticks_per_second() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|v| u64::try_from(v).ok())
        .filter(|v| *v > 0)
        .unwrap_or(100)
}

/// A TCP socket in LISTEN state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenSocket {
    pub local: IpAddr,
    pub port: u16,
    /// The UID that created the socket (the `uid` column): the owner even when we may not read
    /// the process's file descriptors.
    pub uid: u32,
    pub inode: u64,
}

/// LISTEN sockets on `port` in `<proc_root>/net/tcp` and `tcp6` (the network namespace of
/// whoever reads `<proc_root>/net`; pass `/proc/<pid>` as root for another namespace).
pub fn listen_sockets(proc_root: &Path, port: u16) -> Result<Vec<ListenSocket>, ProcError> {
    // The kernel's own /proc: ask it for listening sockets only (sock_diag.rs says why);
    // the files when that fails, or for another root (tests).
    if proc_root == Path::new("/proc")
        && let Ok(sockets) = super::sock_diag::listen_sockets(port)
    {
        return Ok(sockets);
    }
    listen_sockets_from_files(proc_root, port)
}

/// [`listen_sockets`] from `net/tcp` and `net/tcp6` under `proc_root`.
pub fn listen_sockets_from_files(
    proc_root: &Path,
    port: u16,
) -> Result<Vec<ListenSocket>, ProcError> {
    let mut out = Vec::new();
    let mut readable = false;
    let mut last_err = None;
    for file in ["tcp", "tcp6"] {
        let path = proc_root.join("net").join(file);
        match fs::File::open(&path) {
            Ok(f) => {
                readable = true;
                out.extend(
                    BufReader::new(f)
                        .lines()
                        .take(MAX_SOCKET_LINES)
                        .map_while(Result::ok)
                        .filter_map(|l| parse_tcp_line(&l))
                        .filter(|s| s.port == port),
                );
            }
            // tcp6 is absent when IPv6 is disabled.
            Err(e) => last_err = Some((path, e.to_string())),
        }
    }
    if !readable && let Some((path, reason)) = last_err {
        return Err(ProcError::Unreadable { path, reason });
    }
    Ok(out)
}

/// One line of `/proc/net/tcp{,6}`: `sl local rem st tx:rx tr:when retrnsmt uid timeout inode`.
fn parse_tcp_line(line: &str) -> Option<ListenSocket> {
    let mut f = line.split_whitespace();
    let _sl = f.next()?;
    let local = f.next()?;
    let _remote = f.next()?;
    if f.next()? != TCP_LISTEN {
        return None;
    }
    let mut f = f.skip(3);
    let uid = f.next()?.parse().ok()?;
    let _timeout = f.next()?;
    let inode = f.next()?.parse().ok()?;
    let (addr, port) = local.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    Some(ListenSocket {
        local: parse_hex_addr(addr)?,
        port,
        uid,
        inode,
    })
}

/// The kernel prints each 32-bit word of the address as a native-endian number.
fn parse_hex_addr(hex: &str) -> Option<IpAddr> {
    let word = |i: usize| -> Option<[u8; 4]> {
        let s = hex.get(i * 8..i * 8 + 8)?;
        Some(u32::from_str_radix(s, 16).ok()?.to_ne_bytes())
    };
    match hex.len() {
        8 => Some(IpAddr::V4(Ipv4Addr::from(word(0)?))),
        32 => {
            let mut b = [0u8; 16];
            for (i, chunk) in b.chunks_exact_mut(4).enumerate() {
                chunk.copy_from_slice(&word(i)?);
            }
            Some(IpAddr::V6(Ipv6Addr::from(b)))
        }
        _ => None,
    }
}

/// Which of `candidates` holds a LISTEN socket on `port`: the sockets come from each
/// candidate's own `net/tcp{,6}` (its network namespace), then its `fd/*` links are matched
/// against `socket:[inode]`. Reading another user's `fd/` needs root (or CAP_SYS_PTRACE);
/// without it the answer is `None` and [`listen_sockets`]'s `uid` still names the owner.
pub fn process_listening_on(proc_root: &Path, port: u16, candidates: &[u32]) -> Option<u32> {
    candidates.iter().copied().find(|pid| {
        let dir = proc_root.join(pid.to_string());
        let inodes: BTreeSet<u64> = match listen_sockets(&dir, port) {
            Ok(s) if !s.is_empty() => s.into_iter().map(|s| s.inode).collect(),
            _ => match listen_sockets(proc_root, port) {
                Ok(s) => s.into_iter().map(|s| s.inode).collect(),
                Err(_) => return false,
            },
        };
        !inodes.is_empty() && holds_socket(&dir, &inodes)
    })
}

fn holds_socket(pid_dir: &Path, inodes: &BTreeSet<u64>) -> bool {
    let Ok(fds) = fs::read_dir(pid_dir.join("fd")) else {
        return false;
    };
    fds.take(MAX_FDS).flatten().any(|fd| {
        fs::read_link(fd.path()).ok().is_some_and(|target| {
            target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:["))
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|n| inodes.contains(&n))
        })
    })
}

/// The UID of a user name (for `--envoy-user NAME`); `None` if unknown.
pub fn resolve_user(name: &str) -> Option<u32> {
    nix::unistd::User::from_name(name)
        .ok()
        .flatten()
        .map(|u| u.uid.as_raw())
}

/// The effective and supplementary groups of a process, from `<proc_root>/<pid>/status`;
/// `None` when unreadable.
pub fn process_groups(proc_root: &Path, pid: u32) -> Option<Vec<u32>> {
    let status = fs::read_to_string(proc_root.join(pid.to_string()).join("status")).ok()?;
    parse_groups(&status)
}

/// `Gid:` (the effective one, second field) and `Groups:` of a `status` file.
pub fn parse_groups(status: &str) -> Option<Vec<u32>> {
    let mut gids = Vec::new();
    let mut seen_gid = false;
    for line in status.lines() {
        if let Some(v) = line.strip_prefix("Gid:") {
            let effective = v.split_whitespace().nth(1)?.parse().ok()?;
            gids.push(effective);
            seen_gid = true;
        } else if let Some(v) = line.strip_prefix("Groups:") {
            gids.extend(v.split_whitespace().filter_map(|g| g.parse::<u32>().ok()));
        }
    }
    seen_gid.then_some(gids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_status_groups() {
        let status = "Name:\tenvoy\nUid:\t65534\t65534\t65534\t65534\nGid:\t65534\t65533\t65534\t65534\nGroups:\t4 27 \n";
        assert_eq!(parse_groups(status), Some(vec![65533, 4, 27]));
        assert_eq!(parse_groups("Name: x\n"), None);
    }

    #[test]
    fn stat_with_hostile_comm() {
        let stat = "42 (a) b ) (c) S 1 42 42 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 98765 1 2 3";
        assert_eq!(parse_stat_start_ticks(stat), Some(98765));
        assert_eq!(parse_stat_start_ticks("42 (x) S 1"), None);
        assert_eq!(parse_stat_start_ticks("no paren"), None);
    }

    #[test]
    fn start_time_does_not_overflow() {
        assert_eq!(start_time(u64::MAX, u64::MAX, 100), None);
        let t = start_time(1000, 250, 100).unwrap();
        assert_eq!(
            t.duration_since(SystemTime::UNIX_EPOCH).unwrap(),
            Duration::from_millis(1_002_500)
        );
    }

    #[test]
    fn status_uid() {
        assert_eq!(
            parse_status_uid("Name:\tenvoy\nUid:\t1337\t0\t0\t0\n"),
            Some(1337)
        );
        assert_eq!(parse_status_uid("Name:\tenvoy\n"), None);
        assert_eq!(parse_status_uid("Uid:\tx\n"), None);
    }

    #[test]
    fn tcp_lines() {
        let v4 = "   0: 0100007F:3A98 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1337        0 4242 1 0000000059f3ec64 100 0 0 10 0";
        let s = parse_tcp_line(v4).unwrap();
        assert_eq!(s.local, "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!((s.port, s.uid, s.inode), (15000, 1337, 4242));
        let v6 = "   0: 00000000000000000000000001000000:3A98 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 77 1 0000000000000000 100 0 0 10 0";
        let s = parse_tcp_line(v6).unwrap();
        assert_eq!(s.local, "::1".parse::<IpAddr>().unwrap());
        assert_eq!(s.inode, 77);
        let established = v4.replace(" 0A ", " 01 ");
        assert_eq!(parse_tcp_line(&established), None);
        assert_eq!(parse_tcp_line("  sl  local_address rem_address   st"), None);
        assert_eq!(parse_tcp_line("0: ZZ:1 0:0 0A 0:0 0:0 0 0 0 1"), None);
    }
}
