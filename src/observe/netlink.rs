//! What the two netlink readers (`nf_generation`: nf_tables' ruleset generation, `sock_diag`:
//! listening sockets) share: a non-blocking socket bound to the kernel, the message header
//! (linux/netlink.h) and reading native-endian fields without indexing.

use std::os::fd::OwnedFd;

use nix::sys::socket::{
    AddressFamily, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, socket,
};

/// `NLMSG_HDRLEN`: length, type, flags, sequence, port id.
pub(super) const HDRLEN: usize = 16;
/// `NLMSG_ERROR`.
pub(super) const MSG_ERROR: u16 = 2;

/// A netlink socket of `protocol`, bound. Non-blocking: the kernel answers these requests while
/// they are sent (or while each part of a dump is asked for), so an answer not there at once is
/// an error, never a wait. The error names the call that failed.
pub(super) fn open(protocol: SockProtocol) -> Result<OwnedFd, String> {
    let sock = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        protocol,
    )
    .map_err(|e| format!("socket: {e}"))?;
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&sock),
        &NetlinkAddr::new(0, 0),
    )
    .map_err(|e| format!("bind: {e}"))?;
    Ok(sock)
}

/// A message header for a message of `len` bytes in all (the port id left 0: the kernel's).
pub(super) fn header(len: usize, kind: u16, flags: u16, seq: u32) -> [u8; HDRLEN] {
    let mut h = [0u8; HDRLEN];
    let fields: [&[u8]; 4] = [
        &u32::try_from(len).unwrap_or(u32::MAX).to_ne_bytes(),
        &kind.to_ne_bytes(),
        &flags.to_ne_bytes(),
        &seq.to_ne_bytes(),
    ];
    let mut at = 0;
    for f in fields {
        if let Some(slot) = h.get_mut(at..at + f.len()) {
            slot.copy_from_slice(f);
        }
        at += f.len();
    }
    h
}

pub(super) fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

pub(super) fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
