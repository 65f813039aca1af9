//! Reading iptables: a runner for `iptables-save` / `ip6tables-save` and the restore programs
//! (no shell, a deadline, bounded output), and a cache of the last save of each family. The
//! model and its parser are in [`crate::netfilter`], re-exported here for the readers' paths.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use crate::observe::nf_generation::Stamp;

use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

pub use crate::netfilter::*;

/// Where the iptables programs are, and how long / how much output we accept. Tests point
/// these at other binaries (a missing path, a wrapper).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tools {
    pub save_v4: PathBuf,
    pub save_v6: PathBuf,
    pub restore_v4: PathBuf,
    pub restore_v6: PathBuf,
    /// Deadline for one run of one program.
    pub timeout: Duration,
    /// Cap on a save's output (a VM with a huge ruleset gets an error, not an OOM).
    pub max_output: usize,
}

/// Directories searched for the iptables programs, so the agent never depends on `PATH`.
const SYSTEM_DIRS: [&str; 4] = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"];

impl Tools {
    /// The system's programs, found in the standard directories (falling back to the bare
    /// name, which then fails as "missing" if `PATH` has nothing either).
    pub fn system() -> Tools {
        let find = |name: &str| {
            SYSTEM_DIRS
                .iter()
                .map(|d| Path::new(d).join(name))
                .find(|p| p.exists())
                .unwrap_or_else(|| PathBuf::from(name))
        };
        Tools {
            save_v4: find("iptables-save"),
            save_v6: find("ip6tables-save"),
            restore_v4: find("iptables-restore"),
            restore_v6: find("ip6tables-restore"),
            timeout: Duration::from_secs(10),
            max_output: 32 << 20,
        }
    }

    pub fn save_program(&self, family: Family) -> &Path {
        match family {
            Family::V4 => &self.save_v4,
            Family::V6 => &self.save_v6,
        }
    }

    pub fn restore_program(&self, family: Family) -> &Path {
        match family {
            Family::V4 => &self.restore_v4,
            Family::V6 => &self.restore_v6,
        }
    }
}

impl Default for Tools {
    fn default() -> Self {
        Tools::system()
    }
}

/// Why a run of an iptables program did not give us its output.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum IptablesError {
    #[error("{program} is not installed ({reason})")]
    Missing { program: String, reason: String },
    #[error("cannot run {program}: {reason}")]
    Spawn { program: String, reason: String },
    #[error("{program} failed ({status}): {message}")]
    Failed {
        program: String,
        status: String,
        /// iptables' own message (stderr), bounded, one line.
        message: String,
    },
    #[error("{program} did not finish within {timeout:?}")]
    Timeout { program: String, timeout: Duration },
    #[error("{program} printed more than {limit} bytes")]
    TooLarge { program: String, limit: usize },
    #[error("refusing to run {program}: {reason}")]
    Invalid { program: String, reason: String },
}

impl IptablesError {
    /// The message iptables printed, when it ran and failed.
    pub fn iptables_message(&self) -> Option<&str> {
        match self {
            IptablesError::Failed { message, .. } => Some(message),
            _ => None,
        }
    }

    /// Whether this looks like the kernel lacking the (IPv6) netfilter modules, the case the
    /// guide answers with "reboot the VM and rerun the setup".
    pub fn looks_like_missing_modules(&self) -> bool {
        let IptablesError::Failed { message, .. } = self else {
            return false;
        };
        const SIGNS: [&str; 7] = [
            "insmod",
            "Table does not exist",
            "Address family not supported",
            "Protocol not supported",
            "Could not fetch rule set generation id",
            "can't initialize",
            "Failed to initialize nft",
        ];
        SIGNS.iter().any(|s| message.contains(s))
    }
}

/// Bytes of stderr kept from a failing program.
const STDERR_CAP: usize = 64 << 10;
/// Bytes of iptables' message carried in an error.
pub const MESSAGE_MAX: usize = 1024;

/// Output of a program that exited 0.
pub(crate) struct ToolOutput {
    pub stdout: Vec<u8>,
}

/// Runs `program args` directly (no shell) with `stdin`, a deadline and a cap on stdout.
/// On timeout the child is killed.
pub(crate) async fn run_tool(
    program: &Path,
    args: &[&str],
    stdin: Option<&[u8]>,
    timeout: Duration,
    max_stdout: usize,
) -> Result<ToolOutput, IptablesError> {
    let name = program.display().to_string();
    let run = async {
        let mut child = tokio::process::Command::new(program)
            .args(args)
            .env("LC_ALL", "C")
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => IptablesError::Missing {
                    program: name.clone(),
                    reason: e.to_string(),
                },
                _ => IptablesError::Spawn {
                    program: name.clone(),
                    reason: e.to_string(),
                },
            })?;
        let input = child.stdin.take();
        let write = async move {
            if let (Some(mut pipe), Some(data)) = (input, stdin) {
                // A program that exits early closes the pipe; its exit status tells why.
                let _ = pipe.write_all(data).await;
                let _ = pipe.shutdown().await;
            }
        };
        let out = read_capped(child.stdout.take(), max_stdout);
        let err = read_capped(child.stderr.take(), STDERR_CAP);
        let ((), out, err) = tokio::join!(write, out, err);
        let status = child.wait().await.map_err(|e| IptablesError::Spawn {
            program: name.clone(),
            reason: e.to_string(),
        })?;
        let (stdout, over) = out;
        let (stderr, _) = err;
        if over {
            return Err(IptablesError::TooLarge {
                program: name.clone(),
                limit: max_stdout,
            });
        }
        if !status.success() {
            let status = match status.code() {
                Some(c) => format!("exit status {c}"),
                None => "killed by a signal".to_owned(),
            };
            return Err(IptablesError::Failed {
                program: name.clone(),
                status,
                message: iptables_message(&stderr),
            });
        }
        Ok(ToolOutput { stdout })
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(r) => r,
        Err(_) => Err(IptablesError::Timeout {
            program: name,
            timeout,
        }),
    }
}

/// Reads up to `cap` bytes. Returns the bytes and whether there was more; on "more" it stops
/// reading and drops the pipe, so a writer that does not stop gets SIGPIPE instead of blocking.
async fn read_capped<R: AsyncRead + Unpin>(reader: Option<R>, cap: usize) -> (Vec<u8>, bool) {
    let Some(mut reader) = reader else {
        return (Vec::new(), false);
    };
    let mut kept = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return (kept, false),
            Ok(n) => {
                let chunk = buf.get(..n).unwrap_or(&[]);
                let room = cap.saturating_sub(kept.len());
                kept.extend_from_slice(chunk.get(..room.min(chunk.len())).unwrap_or(&[]));
                if chunk.len() > room {
                    return (kept, true);
                }
            }
        }
    }
}

/// iptables' stderr as one bounded line, without its "Try `iptables -h'" boilerplate.
fn iptables_message(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("Try `"))
        .collect();
    let mut joined = String::new();
    for l in &lines {
        if !joined.is_empty() {
            joined.push_str(if joined.ends_with(':') { " " } else { "; " });
        }
        joined.push_str(l);
    }
    if joined.is_empty() {
        joined.push_str("(no message)");
    }
    crate::text::truncate_with_ellipsis(&crate::text::strip_control(&joined), MESSAGE_MAX)
}

/// Runs `iptables-save` (or `ip6tables-save`) for one table (`Some("nat")`) or all tables
/// (`None`), and parses it.
pub async fn save(
    tools: &Tools,
    family: Family,
    table: Option<&str>,
) -> Result<Ruleset, IptablesError> {
    Ok(parse_save(&save_text(tools, family, table).await?))
}

/// Like [`save`], without parsing: the output as text (invalid UTF-8 replaced), for a caller
/// that can tell from the text alone that nothing changed (a parse of a 10,000-rule table
/// costs more than the comparison).
pub async fn save_text(
    tools: &Tools,
    family: Family,
    table: Option<&str>,
) -> Result<String, IptablesError> {
    let program = tools.save_program(family);
    let mut args = Vec::new();
    if let Some(t) = table {
        if !is_name(t) || !t.bytes().all(|b| b.is_ascii_lowercase()) {
            return Err(IptablesError::Invalid {
                program: program.display().to_string(),
                reason: format!("invalid table name {}", bounded(t)),
            });
        }
        args.push("-t");
        args.push(t);
    }
    let out = run_tool(program, &args, None, tools.timeout, tools.max_output).await?;
    Ok(match String::from_utf8(out.stdout) {
        Ok(text) => text,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    })
}

/// A save and the stamp read before it.
type Kept = (Stamp, Arc<Ruleset>);

/// Saves of every table, one per family, kept with the [`Stamp`] read before each and reused
/// while the stamp holds: a daemon polling an unchanged 10,000-rule ruleset runs no
/// `iptables-save` and parses nothing.
#[derive(Debug, Default)]
pub struct SaveCache {
    kept: std::sync::Mutex<[Option<Kept>; 2]>,
    /// Reads answered from the cache, for tests and metrics.
    reused: std::sync::atomic::AtomicU64,
}

impl SaveCache {
    /// All tables of `family`, from the cache if nothing changed since they were read.
    pub async fn save(&self, tools: &Tools, family: Family) -> Result<Arc<Ruleset>, IptablesError> {
        let i = family.index();
        let stamp = Stamp::read(tools.save_program(family));
        if let Some(stamp) = stamp
            && let Ok(kept) = self.kept.lock()
            && let Some(Some((at, rs))) = kept.get(i)
            && *at == stamp
        {
            self.reused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Ok(Arc::clone(rs));
        }
        let text = save_text(tools, family, None).await;
        let keep = match &text {
            Ok(t) => Stamp::for_save(stamp, t),
            Err(_) => None,
        };
        let rs = text.map(|t| Arc::new(parse_save(&t)));
        if let Ok(mut kept) = self.kept.lock()
            && let Some(slot) = kept.get_mut(i)
        {
            *slot = match (keep, &rs) {
                (Some(stamp), Ok(rs)) => Some((stamp, Arc::clone(rs))),
                _ => None,
            };
        }
        rs
    }

    pub fn reused(&self) -> u64 {
        self.reused.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_messages() {
        let e = IptablesError::Failed {
                program: "ip6tables-save".into(),
                status: "exit status 1".into(),
                message: iptables_message(
                    b"ip6tables-save v1.8.7 (legacy): can't initialize ip6tables table `nat': Table does not exist (do you need to insmod?)\nPerhaps ip6tables or your kernel needs to be upgraded.\n",
                ),
            };
        assert!(e.looks_like_missing_modules());
        assert!(e.to_string().contains("Perhaps ip6tables"));
        assert_eq!(
                iptables_message(b"iptables-restore: Chain 'X' does not exist\nError occurred at line: 4\nTry `iptables-restore -h' or 'iptables-restore --help' for more information.\n"),
                "iptables-restore: Chain 'X' does not exist; Error occurred at line: 4"
            );
        assert_eq!(iptables_message(b""), "(no message)");
    }
}
