//! Private network namespaces for tests that program real iptables and send real packets.
//!
//! A network namespace belongs to a thread: [`in_new_netns`] runs a closure on a fresh thread
//! that first `unshare(CLONE_NEWNET)`s, so the closure, the sockets it opens and every process
//! it spawns (`ip`, `iptables-*`, Envoy, curl) see a namespace of their own with only `lo`.
//! The host namespace is never touched: every helper here that changes something first checks
//! that the calling thread is in a namespace other than the process's main thread's.
//!
//! A second namespace, the [`Peer`], is held by a child process (`unshare -n sleep`); commands
//! run in it through `nsenter`, closures through `setns` on a fresh thread. [`Lab`] wires the
//! two with a veth pair so that VIPs can be routed "out" without anything leaving the test.
//! Needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN); without it the error says so.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sched::CloneFlags;

/// How long a helper command (`ip`, `iptables-*`, `nsenter`) may take.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);

fn ns_inode(path: &str) -> anyhow::Result<u64> {
    Ok(std::fs::metadata(path)
        .with_context(|| format!("cannot stat {path}"))?
        .ino())
}

/// Whether the calling thread is in a network namespace other than the main thread's.
pub fn in_private_netns() -> bool {
    match (
        ns_inode("/proc/thread-self/ns/net"),
        ns_inode("/proc/self/ns/net"),
    ) {
        (Ok(a), Ok(b)) => a != b,
        _ => false,
    }
}

/// Fails unless the calling thread is in a private network namespace.
pub fn ensure_private() -> anyhow::Result<()> {
    if in_private_netns() {
        Ok(())
    } else {
        bail!(
            "refusing to change networking: this thread is in the host's network namespace (use netns::in_new_netns)"
        )
    }
}

/// Runs `f` on a new thread inside a new network namespace whose `lo` is up, and returns its
/// result. A panic in `f` is propagated. Fails, saying so, when the namespace cannot be made
/// (not root, or unshare refused by the sandbox).
pub fn in_new_netns<T, F>(f: F) -> anyhow::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> anyhow::Result<T> + Send + 'static,
{
    let handle = std::thread::Builder::new()
        .name("netns".into())
        .spawn(move || -> anyhow::Result<T> {
            nix::sched::unshare(CloneFlags::CLONE_NEWNET).map_err(|e| {
                anyhow::anyhow!(
                    "cannot create a private network namespace: unshare(CLONE_NEWNET) failed: {e} \
                     (uid {}); these tests need root (CAP_SYS_ADMIN)",
                    nix::unistd::geteuid()
                )
            })?;
            ensure_private()?;
            ip(&["link", "set", "lo", "up"])?;
            f()
        })
        .context("cannot spawn the namespace thread")?;
    match handle.join() {
        Ok(r) => r,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Runs `cmd` with a deadline; fails with its stderr when it exits non-zero.
pub fn run(cmd: &mut Command) -> anyhow::Result<String> {
    run_with_input(cmd, None)
}

/// Like [`run`], writing `input` to its stdin.
pub fn run_with_input(cmd: &mut Command, input: Option<&str>) -> anyhow::Result<String> {
    let shown = format!("{cmd:?}");
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("cannot run {shown}"))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        let _ = stdin.write_all(text.as_bytes());
    }
    let mut stdout = child.stdout.take().context("stdout")?;
    let mut stderr = child.stderr.take().context("stderr")?;
    let out_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stdout.read_to_end(&mut v);
        v
    });
    let err_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stderr.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{shown} did not finish within {COMMAND_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let out = String::from_utf8_lossy(&out_reader.join().unwrap_or_default()).into_owned();
    let err = String::from_utf8_lossy(&err_reader.join().unwrap_or_default()).into_owned();
    if !status.success() {
        bail!("{shown} failed ({status}): {}", err.trim());
    }
    Ok(out)
}

/// `ip ARGS` in the calling thread's (private) namespace.
pub fn ip(args: &[&str]) -> anyhow::Result<String> {
    ensure_private()?;
    run(Command::new("ip").args(args))
}

/// `iptables-restore --noflush` (or ip6tables) with `text`, in this private namespace.
pub fn restore(v6: bool, text: &str) -> anyhow::Result<()> {
    ensure_private()?;
    let prog = if v6 {
        "ip6tables-restore"
    } else {
        "iptables-restore"
    };
    run_with_input(Command::new(prog).arg("--noflush"), Some(text)).map(|_| ())
}

/// `iptables-save [-t TABLE]` (or ip6tables) in this private namespace.
pub fn save(v6: bool, table: Option<&str>) -> anyhow::Result<String> {
    ensure_private()?;
    let prog = if v6 {
        "ip6tables-save"
    } else {
        "iptables-save"
    };
    let mut cmd = Command::new(prog);
    if let Some(t) = table {
        cmd.args(["-t", t]);
    }
    run(&mut cmd)
}

/// `iptables ARGS` (or ip6tables) in this private namespace.
pub fn iptables(v6: bool, args: &[&str]) -> anyhow::Result<String> {
    ensure_private()?;
    run(Command::new(if v6 { "ip6tables" } else { "iptables" }).args(args))
}

/// A network namespace held by a child process (`unshare -n sleep`), removed when dropped.
pub struct Peer {
    child: Child,
}

impl Peer {
    /// Makes a new namespace with `lo` up. May be called from any namespace.
    pub fn spawn() -> anyhow::Result<Peer> {
        let own = ns_inode("/proc/thread-self/ns/net")?;
        let child = Command::new("unshare")
            .args(["-n", "--", "sleep", "3600"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot run unshare -n (util-linux)")?;
        let mut peer = Peer { child };
        let path = format!("/proc/{}/ns/net", peer.pid());
        let deadline = Instant::now() + Duration::from_secs(5);
        // unshare switches namespace just before exec'ing sleep: wait for both.
        loop {
            if let Some(status) = peer.child.try_wait()? {
                let mut err = String::new();
                if let Some(mut e) = peer.child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                bail!(
                    "unshare -n exited with {status}: {} (creating a network namespace needs root)",
                    err.trim()
                );
            }
            let comm =
                std::fs::read_to_string(format!("/proc/{}/comm", peer.pid())).unwrap_or_default();
            if ns_inode(&path).is_ok_and(|i| i != own) && comm.trim() == "sleep" {
                break;
            }
            if Instant::now() > deadline {
                bail!("the peer namespace did not appear within 5s");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        peer.ip(&["link", "set", "lo", "up"])?;
        Ok(peer)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A command that runs `program` inside this namespace (`nsenter -t PID -n`).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.args(["-t", &self.pid().to_string(), "-n", "--", program]);
        c
    }

    /// `ip ARGS` inside this namespace.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        run(self.command("ip").args(args))
    }

    /// Runs `f` on a fresh thread inside this namespace.
    pub fn spawn_thread<T, F>(&self, f: F) -> anyhow::Result<JoinHandle<anyhow::Result<T>>>
    where
        T: Send + 'static,
        F: FnOnce() -> anyhow::Result<T> + Send + 'static,
    {
        let ns = File::open(format!("/proc/{}/ns/net", self.pid()))
            .context("cannot open the peer's namespace")?;
        Ok(std::thread::Builder::new()
            .name("netns-peer".into())
            .spawn(move || {
                nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET)
                    .map_err(|e| anyhow::anyhow!("setns into the peer namespace: {e}"))?;
                f()
            })?)
    }

    /// Runs `f` inside this namespace and waits for it.
    pub fn run<T, F>(&self, f: F) -> anyhow::Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> anyhow::Result<T> + Send + 'static,
    {
        match self.spawn_thread(f)?.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A veth pair created in the calling (private) namespace.
pub fn veth_pair(a: &str, b: &str) -> anyhow::Result<()> {
    ip(&["link", "add", a, "type", "veth", "peer", "name", b])?;
    Ok(())
}

/// Adds `addr/prefix` to `dev` (IPv6 without duplicate address detection, so it is usable at
/// once).
pub fn add_addr(dev: &str, cidr: &str) -> anyhow::Result<()> {
    let mut args = vec!["addr", "add", cidr, "dev", dev];
    if cidr.contains(':') {
        args.insert(0, "-6");
        args.push("nodad");
    }
    ip(&args).map(|_| ())
}

/// Routes `cidr` out of `dev` (on-link).
pub fn add_route(cidr: &str, dev: &str) -> anyhow::Result<()> {
    let mut args = vec!["route", "add", cidr, "dev", dev];
    if cidr.contains(':') {
        args.insert(0, "-6");
    }
    ip(&args).map(|_| ())
}

/// The usual topology: this namespace's `spa0` (10.99.0.1/24, fd00:99::1/64) wired to a
/// peer namespace's `spa1` (10.99.0.2/24, fd00:99::2/64), both up.
pub struct Lab {
    pub peer: Peer,
    pub local_if: &'static str,
    pub peer_if: &'static str,
    pub local_v4: Ipv4Addr,
    pub peer_v4: Ipv4Addr,
    pub local_v6: Ipv6Addr,
    pub peer_v6: Ipv6Addr,
}

impl Lab {
    /// Builds it; call from inside [`in_new_netns`].
    pub fn new() -> anyhow::Result<Lab> {
        ensure_private()?;
        let lab = Lab {
            peer: Peer::spawn()?,
            local_if: "spa0",
            peer_if: "spa1",
            local_v4: Ipv4Addr::new(10, 99, 0, 1),
            peer_v4: Ipv4Addr::new(10, 99, 0, 2),
            local_v6: "fd00:99::1".parse()?,
            peer_v6: "fd00:99::2".parse()?,
        };
        veth_pair(lab.local_if, lab.peer_if)?;
        ip(&[
            "link",
            "set",
            lab.peer_if,
            "netns",
            &lab.peer.pid().to_string(),
        ])?;
        add_addr(lab.local_if, &format!("{}/24", lab.local_v4))?;
        add_addr(lab.local_if, &format!("{}/64", lab.local_v6))?;
        ip(&["link", "set", lab.local_if, "up"])?;
        let p = &lab.peer;
        p.ip(&[
            "addr",
            "add",
            &format!("{}/24", lab.peer_v4),
            "dev",
            lab.peer_if,
        ])?;
        p.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{}/64", lab.peer_v6),
            "dev",
            lab.peer_if,
            "nodad",
        ])?;
        p.ip(&["link", "set", lab.peer_if, "up"])?;
        Ok(lab)
    }

    /// Routes `cidr` (e.g. a VIP) to the veth, so connecting to it reaches the peer unless
    /// iptables redirects it.
    pub fn route_to_peer(&self, cidr: &str) -> anyhow::Result<()> {
        add_route(cidr, self.local_if)
    }

    /// Gives the peer the address `ip` too (so it answers for a VIP), and serves `body` over
    /// HTTP on `ip:port` from the peer namespace until the server is dropped.
    pub fn serve_on_peer(&self, ip: IpAddr, port: u16, body: &str) -> anyhow::Result<PeerServer> {
        let cidr = match ip {
            IpAddr::V4(a) => format!("{a}/32"),
            IpAddr::V6(a) => format!("{a}/128"),
        };
        let mut args = vec!["addr", "add", cidr.as_str(), "dev", self.peer_if];
        if ip.is_ipv6() {
            args.insert(0, "-6");
            args.push("nodad");
        }
        self.peer.ip(&args)?;
        serve_http_in(&self.peer, SocketAddr::new(ip, port), body)
    }
}

/// A small HTTP server answering every request with a fixed body; stops when dropped.
pub struct PeerServer {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
    pub addr: SocketAddr,
}

impl Drop for PeerServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Serves `body` on `addr` inside `peer`'s namespace.
pub fn serve_http_in(peer: &Peer, addr: SocketAddr, body: &str) -> anyhow::Result<PeerServer> {
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let body = body.to_owned();
    let stop2 = stop.clone();
    let handle = peer.spawn_thread(move || {
        let listener = match TcpListener::bind(addr) {
            Ok(l) => l,
            Err(e) => {
                let _ = ready_tx.send(Err(format!("bind {addr}: {e}")));
                bail!("bind {addr}: {e}");
            }
        };
        listener.set_nonblocking(true)?;
        let _ = ready_tx.send(Ok(()));
        while !stop2.load(Ordering::SeqCst) {
            match listener.accept() {
                Ok((mut s, _)) => {
                    s.set_nonblocking(false)?;
                    s.set_read_timeout(Some(Duration::from_secs(2)))?;
                    // Read the whole request head before answering: a client may send it in
                    // several segments, and closing with some of it unread (or still coming)
                    // resets the connection under the client's next write (EPIPE).
                    read_request_head(&mut s);
                    let _ = write!(
                        s,
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => bail!("accept: {e}"),
            }
        }
        Ok(())
    })?;
    match ready_rx.recv_timeout(Duration::from_secs(5)) {
        Ok(Ok(())) => Ok(PeerServer {
            stop,
            handle: Some(handle),
            addr,
        }),
        Ok(Err(e)) => bail!("peer server: {e}"),
        Err(_) => bail!("peer server did not start within 5s"),
    }
}

/// Reads from `s` until the blank line ending an HTTP request head, EOF, an error (the read
/// timeout set by the caller included) or 64 KiB, whichever comes first.
fn read_request_head(s: &mut TcpStream) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while head.len() < 64 * 1024 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
}

/// Whether `path` exists (for tests that check tools are installed and want a clear message).
pub fn tool_exists(path: &str) -> bool {
    Path::new(path).exists()
        || std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(path).is_file()))
}
