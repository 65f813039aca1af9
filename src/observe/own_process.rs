//! The agent's own footprint, read from `/proc/self` at scrape time for the `process_*` metrics
//! (the figures the README's benchmarks quote: RSS, CPU, open files, start time).

use std::path::Path;
use std::time::UNIX_EPOCH;

use super::procfs;

/// What `/proc/<pid>` says of one process; each field `None` when it could not be read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OwnProcess {
    pub resident_bytes: Option<u64>,
    pub cpu_seconds: Option<f64>,
    pub open_fds: Option<u64>,
    pub start_time_seconds: Option<f64>,
}

/// Reads `<proc_root>/self` (and `<proc_root>/stat` for the boot time).
pub fn read(proc_root: &Path) -> OwnProcess {
    let me = proc_root.join("self");
    let hz = procfs::clock_ticks_per_second();
    let stat = procfs::read_small(&me.join("stat"), 4096)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let status = procfs::read_small(&me.join("status"), 64 * 1024)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let start_time_seconds = parse_stat_fields(&stat)
        .and_then(|f| f.start_ticks)
        .zip(procfs::boot_time(proc_root))
        .and_then(|(ticks, btime)| procfs::start_time(btime, ticks, hz))
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs_f64());
    OwnProcess {
        resident_bytes: parse_vm_rss(&status),
        cpu_seconds: parse_stat_fields(&stat).and_then(|f| f.cpu_seconds(hz)),
        open_fds: count_fds(&me.join("fd")),
        start_time_seconds,
    }
}

/// Fields of `stat` that matter here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StatFields {
    utime: u64,
    stime: u64,
    start_ticks: Option<u64>,
}

impl StatFields {
    fn cpu_seconds(&self, hz: u64) -> Option<f64> {
        let ticks = self.utime.checked_add(self.stime)?;
        (hz > 0).then(|| ticks as f64 / hz as f64)
    }
}

/// Fields 14 (utime), 15 (stime) and 22 (starttime), counted after the last `)` (the command
/// name may hold spaces and parentheses).
fn parse_stat_fields(stat: &str) -> Option<StatFields> {
    let after = stat.get(stat.rfind(')')? + 1..)?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let num = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
    Some(StatFields {
        utime: num(11)?,
        stime: num(12)?,
        start_ticks: num(19),
    })
}

/// `VmRSS:   9876 kB` → bytes.
fn parse_vm_rss(status: &str) -> Option<u64> {
    let rest = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let mut parts = rest.split_whitespace();
    let n: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") | None => n.checked_mul(1024),
        Some(_) => None,
    }
}

/// Entries of `/proc/self/fd` (bounded: a runaway count still ends).
fn count_fds(dir: &Path) -> Option<u64> {
    let entries = std::fs::read_dir(dir).ok()?;
    Some(entries.take(1 << 20).filter(Result::is_ok).count() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    #[test]
    fn stat_fields_after_a_hostile_command_name() {
        let stat = "1234 (a) b (c) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 5 0 9876 1000 200 18446744073709551615";
        let f = parse_stat_fields(stat).unwrap();
        assert_eq!(f.utime, 250);
        assert_eq!(f.stime, 50);
        assert_eq!(f.start_ticks, Some(9876));
        assert_eq!(f.cpu_seconds(100), Some(3.0));
        assert_eq!(parse_stat_fields("garbage"), None);
        assert_eq!(parse_stat_fields("1 (x) S 1 2"), None);
    }

    #[test]
    fn rss_in_bytes() {
        assert_eq!(
            parse_vm_rss("Name:\tx\nVmRSS:\t    9876 kB\n"),
            Some(9876 * 1024)
        );
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
        assert_eq!(parse_vm_rss("VmRSS: 99999999999999999999 kB"), None);
    }

    #[test]
    fn reads_this_process() {
        let me = read(Path::new("/proc"));
        assert!(me.resident_bytes.is_some_and(|b| b > 0), "{me:?}");
        assert!(me.cpu_seconds.is_some(), "{me:?}");
        assert!(me.open_fds.is_some_and(|n| n >= 3), "{me:?}");
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            me.start_time_seconds
                .is_some_and(|t| t <= now + 1.0 && t > now - 86_400.0 * 365.0),
            "{me:?}"
        );
    }
}
