//! The agent's own connections (metadata server, Google APIs, the control-plane probe) carry a
//! socket mark, and `intercept-all-outbound` returns marked packets before redirecting
//! anything (docs/contract.md#11-trust): when Envoy is down, the agent must still reach the metadata server and
//! Cloud Logging to say so.
//!
//! Why a mark and not `--uid-owner 0`: the agent runs as root, and excluding UID 0 would let
//! every root process on the VM bypass the mesh; a mark names only the sockets the agent
//! itself opens. Setting it (`SO_MARK`) needs `CAP_NET_ADMIN`, which the unit has (and which
//! programming iptables needs anyway); without it (`doctor` as a user) sockets go unmarked,
//! which changes nothing for a process that cannot program interception either.
//!
//! The value sits in the top byte, away from the bits kube-proxy (0x4000, 0x8000), Cilium
//! (0x0f00) and Tailscale (0xff0000) use; it is matched exactly.

use std::io;
use std::net::SocketAddr;
use std::sync::OnceLock;

use tokio::net::{TcpSocket, TcpStream};

/// The mark on the agent's own sockets.
pub const MARK: u32 = 0x5300_0000;

/// `Some(MARK)` when this process may mark its sockets (tried once).
pub fn mark() -> Option<u32> {
    static CAN: OnceLock<bool> = OnceLock::new();
    CAN.get_or_init(|| TcpSocket::new_v4().is_ok_and(|s| set_mark(&s).is_ok()))
        .then_some(MARK)
}

fn set_mark(s: &TcpSocket) -> nix::Result<()> {
    nix::sys::socket::setsockopt(s, nix::sys::socket::sockopt::Mark, &MARK)
}

/// Connects to `addr` from a marked socket (unmarked when marking is not permitted).
pub async fn connect_addr(addr: SocketAddr) -> io::Result<TcpStream> {
    let s = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if mark().is_some() {
        let _ = set_mark(&s);
    }
    s.connect(addr).await
}

/// Connects to `host:port`, trying each address in turn, like `TcpStream::connect`.
pub async fn connect(authority: &str) -> io::Result<TcpStream> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(authority).await?.collect();
    connect_any(&addrs, authority).await
}

/// Connects to the first of `addrs` (the addresses of `authority`) that answers.
pub async fn connect_any(addrs: &[SocketAddr], authority: &str) -> io::Result<TcpStream> {
    let mut last = None;
    for addr in addrs {
        match connect_addr(*addr).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        io::Error::new(io::ErrorKind::NotFound, format!("{authority}: no address"))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connects_marked_or_not() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let s = connect(&addr.to_string()).await.unwrap();
        let got = nix::sys::socket::getsockopt(&s, nix::sys::socket::sockopt::Mark).unwrap();
        assert_eq!(got, mark().unwrap_or(0));
        assert!(connect("127.0.0.1:1").await.is_err());
    }
}
