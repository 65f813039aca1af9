//! The listening TCP sockets of this network namespace from the kernel's sock_diag netlink
//! interface (what `ss -ltn` uses), asking for the LISTEN state only.
//!
//! Why not `/proc/net/tcp`: printing it walks every bucket of the kernel's established-socket
//! hash table, which is sized from the machine's memory and shared by all namespaces (262,144
//! buckets on a 24 GiB host): about 5 ms of kernel time per read of tcp and tcp6, four reads a
//! poll for the admin socket's trust, more than half of the agent's CPU on the booted image
//! (perf, tests/system/footprint.sh). A dump for LISTEN only walks the listening table and
//! nothing else.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;

use nix::sys::socket::{AddressFamily, MsgFlags, SockProtocol, recv, send};

use super::netlink::{self, HDRLEN as NLMSG_HDRLEN, MSG_ERROR as NLMSG_ERROR, u16_at, u32_at};

use super::procfs::ListenSocket;

/// `SOCK_DIAG_BY_FAMILY`, `NLMSG_DONE`, `NLM_F_REQUEST | NLM_F_DUMP`
/// (linux/sock_diag.h, netlink.h).
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST_DUMP: u16 = 0x1 | 0x300;
/// `struct inet_diag_req_v2` and `struct inet_diag_msg` (linux/inet_diag.h).
const REQ_LEN: usize = 56;
const MSG_LEN: usize = 72;
const IPPROTO_TCP: u8 = 6;
const TCP_LISTEN: u8 = 10;
/// A bound on the messages of one dump (a listening socket each).
const MAX_SOCKETS: usize = 65_536;

/// The listening TCP sockets (IPv4 and IPv6) on `port`. An error when the kernel cannot be
/// asked (no netlink, refused, a dump cut short): the caller falls back to `/proc/net/tcp`.
pub fn listen_sockets(port: u16) -> Result<Vec<ListenSocket>, String> {
    let mut out = dump(AddressFamily::Inet as u8, port)?;
    // IPv6 may be disabled: then there is nothing of it to list.
    if let Ok(v6) = dump(AddressFamily::Inet6 as u8, port) {
        out.extend(v6);
    }
    Ok(out)
}

fn dump(family: u8, port: u16) -> Result<Vec<ListenSocket>, String> {
    // Non-blocking (netlink::open): the kernel makes each part of a dump while it is asked
    // for (in send and in each recv), so a part that is not there at once is an error.
    let sock = netlink::open(SockProtocol::NetlinkSockDiag)?;
    let fd = sock.as_raw_fd();
    send(fd, &request(family), MsgFlags::empty()).map_err(|e| format!("send: {e}"))?;
    let mut out = Vec::new();
    let mut seen = 0usize;
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = recv(fd, &mut buf, MsgFlags::empty()).map_err(|e| format!("recv: {e}"))?;
        match parse_part(buf.get(..n).unwrap_or_default(), port, &mut out, &mut seen)? {
            Part::Done => return Ok(out),
            Part::More if seen > MAX_SOCKETS => return Err("too many sockets".into()),
            Part::More => {}
        }
    }
}

/// A dump request: the netlink header and an `inet_diag_req_v2` for TCP in LISTEN.
fn request(family: u8) -> [u8; NLMSG_HDRLEN + REQ_LEN] {
    let mut m = [0u8; NLMSG_HDRLEN + REQ_LEN];
    let head = netlink::header(
        NLMSG_HDRLEN + REQ_LEN,
        SOCK_DIAG_BY_FAMILY,
        NLM_F_REQUEST_DUMP,
        1,
    );
    if let Some(slot) = m.get_mut(..NLMSG_HDRLEN) {
        slot.copy_from_slice(&head);
    }
    let states = 1u32 << TCP_LISTEN;
    if let Some(slot) = m.get_mut(NLMSG_HDRLEN..NLMSG_HDRLEN + 4) {
        slot.copy_from_slice(&[family, IPPROTO_TCP, 0, 0]);
    }
    if let Some(slot) = m.get_mut(NLMSG_HDRLEN + 4..NLMSG_HDRLEN + 8) {
        slot.copy_from_slice(&states.to_ne_bytes());
    }
    m
}

#[derive(Debug, PartialEq, Eq)]
enum Part {
    More,
    Done,
}

/// One datagram of the answer: its `inet_diag_msg`s on `port` are added to `out`.
fn parse_part(
    b: &[u8],
    port: u16,
    out: &mut Vec<ListenSocket>,
    seen: &mut usize,
) -> Result<Part, String> {
    let mut msg = b;
    while msg.len() >= NLMSG_HDRLEN {
        let len = u32_at(msg, 0).ok_or("header")? as usize;
        let kind = u16_at(msg, 4).ok_or("header")?;
        if len < NLMSG_HDRLEN || len > msg.len() {
            return Err("message length".into());
        }
        let body = msg.get(NLMSG_HDRLEN..len).unwrap_or_default();
        match kind {
            NLMSG_DONE => return Ok(Part::Done),
            NLMSG_ERROR => {
                let errno = body
                    .get(..4)
                    .and_then(|e| e.try_into().ok())
                    .map(i32::from_ne_bytes)
                    .ok_or("error message")?;
                return Err(format!(
                    "refused: {}",
                    nix::errno::Errno::from_raw(errno.saturating_neg())
                ));
            }
            SOCK_DIAG_BY_FAMILY => {
                *seen += 1;
                if let Some(s) = parse_msg(body)
                    && s.port == port
                {
                    out.push(s);
                }
            }
            _ => {}
        }
        msg = msg.get(len.next_multiple_of(4)..).unwrap_or_default();
    }
    Ok(Part::More)
}

/// An `inet_diag_msg`: family, state, the socket id (ports big-endian, addresses in network
/// order), then uid and inode.
fn parse_msg(b: &[u8]) -> Option<ListenSocket> {
    if b.len() < MSG_LEN || *b.get(1)? != TCP_LISTEN {
        return None;
    }
    let port = u16::from_be_bytes(b.get(4..6)?.try_into().ok()?);
    let src: [u8; 16] = b.get(8..24)?.try_into().ok()?;
    let local = match *b.first()? {
        f if f == AddressFamily::Inet as u8 => {
            IpAddr::V4(Ipv4Addr::new(src[0], src[1], src[2], src[3]))
        }
        f if f == AddressFamily::Inet6 as u8 => IpAddr::V6(Ipv6Addr::from(src)),
        _ => return None,
    };
    Some(ListenSocket {
        local,
        port,
        uid: u32_at(b, 64)?,
        inode: u64::from(u32_at(b, 68)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A listener of this test is found with its owner and inode, as `/proc/net/tcp` says.
    #[test]
    fn finds_a_listener_as_proc_net_tcp_does() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let got = listen_sockets(port).unwrap();
        let from_proc =
            crate::observe::procfs::listen_sockets_from_files(std::path::Path::new("/proc"), port)
                .unwrap();
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got, from_proc);
        assert_eq!(got[0].local, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(got[0].uid, nix::unistd::getuid().as_raw());
        // A port nobody listens on: nothing.
        drop(l);
        assert!(listen_sockets(port).unwrap().is_empty());
    }

    #[test]
    fn the_request_asks_tcp_in_listen() {
        let r = request(10);
        assert_eq!(u32_at(&r, 0), Some(72));
        assert_eq!(u16_at(&r, 4), Some(SOCK_DIAG_BY_FAMILY));
        assert_eq!(&r[16..18], &[10, IPPROTO_TCP]);
        assert_eq!(u32_at(&r, 20), Some(1 << 10));
    }

    #[test]
    fn bad_answers_are_errors_not_panics() {
        let mut out = Vec::new();
        let mut seen = 0;
        // A length past the datagram.
        let mut m = vec![0u8; 20];
        m[..4].copy_from_slice(&200u32.to_ne_bytes());
        assert!(parse_part(&m, 80, &mut out, &mut seen).is_err());
        // A short inet_diag_msg is skipped.
        let mut m = vec![0u8; NLMSG_HDRLEN + 8];
        m[..4].copy_from_slice(&((NLMSG_HDRLEN + 8) as u32).to_ne_bytes());
        m[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        assert_eq!(parse_part(&m, 80, &mut out, &mut seen), Ok(Part::More));
        assert!(out.is_empty());
        // An error message.
        let mut m = vec![0u8; NLMSG_HDRLEN + 4];
        m[..4].copy_from_slice(&((NLMSG_HDRLEN + 4) as u32).to_ne_bytes());
        m[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        m[16..20].copy_from_slice(&(-13i32).to_ne_bytes());
        assert!(parse_part(&m, 80, &mut out, &mut seen).is_err());
    }
}
