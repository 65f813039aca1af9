//! nf_tables' ruleset generation: a counter the kernel bumps on every committed change to any
//! table of the network namespace (iptables-nft, nft, firewalld alike). Reading it is one
//! netlink round trip, against tens of milliseconds for an `iptables-save` of a big table, so a
//! poll that finds it unchanged since its last save can reuse what that save said.
//!
//! Only iptables' nf_tables backend is covered: a legacy (x_tables) ruleset changes without
//! touching the counter, so a save is trusted with a generation only when it says
//! `(nf_tables)` in its header, and only while the save program on disk is the same file (an
//! `update-alternatives` switch to legacy changes it).

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::sys::socket::{MsgFlags, SockProtocol, recv, send};
use thiserror::Error;

use super::netlink::{self, HDRLEN as NLMSG_HDRLEN, MSG_ERROR as NLMSG_ERROR, u16_at, u32_at};

/// `NFNL_SUBSYS_NFTABLES`, `NFT_MSG_GETGEN`, `NFT_MSG_NEWGEN`, `NFTA_GEN_ID`
/// (linux/netfilter/nfnetlink.h, nf_tables.h).
const SUBSYS_NFTABLES: u16 = 10;
const MSG_GETGEN: u16 = 16;
const MSG_NEWGEN: u16 = 15;
const ATTR_GEN_ID: u16 = 1;
/// `NLMSG_ERROR`, `NLM_F_REQUEST`, and the attribute type bits that are flags.
const NLM_F_REQUEST: u16 = 1;
const NLA_TYPE_MASK: u16 = 0x3fff;
const NFGENMSG_LEN: usize = 4;

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum GenerationError {
    #[error("netlink: {0}")]
    Socket(String),
    #[error("nf_tables refused the query: {0}")]
    Refused(String),
    #[error("unexpected netlink answer: {0}")]
    Malformed(&'static str),
}

/// The current ruleset generation of this process's network namespace.
///
/// Never blocks: the kernel answers a netfilter netlink request while it is being sent, so the
/// answer is read without waiting, and no answer is an error. Needs `CAP_NET_ADMIN`, which the
/// agent has for iptables anyway.
pub fn current() -> Result<u32, GenerationError> {
    let sock = netlink::open(SockProtocol::NetlinkNetFilter).map_err(GenerationError::Socket)?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&sock);
    let request = request(1);
    send(fd, &request, MsgFlags::empty())
        .map_err(|e| GenerationError::Socket(format!("send: {e}")))?;
    let mut buf = [0u8; 4096];
    let n = recv(fd, &mut buf, MsgFlags::empty())
        .map_err(|e| GenerationError::Socket(format!("recv: {e}")))?;
    parse_answer(buf.get(..n).unwrap_or_default())
}

/// An `NFT_MSG_GETGEN` request: the netlink header and a zeroed `nfgenmsg`.
fn request(seq: u32) -> [u8; NLMSG_HDRLEN + NFGENMSG_LEN] {
    let mut m = [0u8; NLMSG_HDRLEN + NFGENMSG_LEN];
    let kind = (SUBSYS_NFTABLES << 8) | MSG_GETGEN;
    let head = netlink::header(NLMSG_HDRLEN + NFGENMSG_LEN, kind, NLM_F_REQUEST, seq);
    if let Some(slot) = m.get_mut(..NLMSG_HDRLEN) {
        slot.copy_from_slice(&head);
    }
    // The nfgenmsg after it stays zeroed.
    m
}

/// The generation from the kernel's answer: an `NFT_MSG_NEWGEN` with an `NFTA_GEN_ID`
/// attribute (big-endian), or a netlink error.
fn parse_answer(b: &[u8]) -> Result<u32, GenerationError> {
    let mut msg = b;
    while msg.len() >= NLMSG_HDRLEN {
        let len = u32_at(msg, 0).ok_or(GenerationError::Malformed("header"))? as usize;
        let kind = u16_at(msg, 4).ok_or(GenerationError::Malformed("header"))?;
        if len < NLMSG_HDRLEN || len > msg.len() {
            return Err(GenerationError::Malformed("message length"));
        }
        let body = msg.get(NLMSG_HDRLEN..len).unwrap_or_default();
        if kind == NLMSG_ERROR {
            let errno = body
                .get(..4)
                .and_then(|e| e.try_into().ok())
                .map(i32::from_ne_bytes)
                .ok_or(GenerationError::Malformed("error message"))?;
            return Err(GenerationError::Refused(
                nix::errno::Errno::from_raw(errno.saturating_neg()).to_string(),
            ));
        }
        if kind == (SUBSYS_NFTABLES << 8) | MSG_NEWGEN {
            let mut attrs = body.get(NFGENMSG_LEN..).unwrap_or_default();
            while attrs.len() >= 4 {
                let alen = u16_at(attrs, 0).unwrap_or(0) as usize;
                let atype = u16_at(attrs, 2).unwrap_or(0) & NLA_TYPE_MASK;
                if alen < 4 || alen > attrs.len() {
                    return Err(GenerationError::Malformed("attribute length"));
                }
                if atype == ATTR_GEN_ID {
                    return attrs
                        .get(4..8)
                        .filter(|_| alen >= 8)
                        .and_then(|v| v.try_into().ok())
                        .map(u32::from_be_bytes)
                        .ok_or(GenerationError::Malformed("generation attribute"));
                }
                attrs = attrs.get(alen.next_multiple_of(4)..).unwrap_or_default();
            }
            return Err(GenerationError::Malformed("no generation attribute"));
        }
        msg = msg.get(len.next_multiple_of(4)..).unwrap_or_default();
    }
    Err(GenerationError::Malformed("no generation message"))
}

/// What a save is trusted with: the generation read just before it, and the save program as
/// a file (`update-alternatives` may point the path at another backend).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    generation: u32,
    program: (u64, u64, i64, i64),
}

impl Stamp {
    /// Read before a save: `None` when the generation cannot be read (no nf_tables, no
    /// capability) or the program cannot be looked at, and the save must then be run.
    pub fn read(save_program: &Path) -> Option<Stamp> {
        let m = std::fs::metadata(save_program).ok()?;
        let generation = current().ok()?;
        Some(Stamp {
            generation,
            program: (m.dev(), m.ino(), m.mtime(), m.mtime_nsec()),
        })
    }

    /// The stamp to keep with a save's text: only an nf_tables backend's save is covered by
    /// the generation.
    pub fn for_save(stamp: Option<Stamp>, saved: &str) -> Option<Stamp> {
        stamp.filter(|_| is_nf_tables_save(saved))
    }
}

/// Whether a save came from iptables' nf_tables backend (`# Generated by iptables-save v1.8.9
/// (nf_tables) on …`).
pub fn is_nf_tables_save(saved: &str) -> bool {
    saved
        .lines()
        .take_while(|l| l.starts_with('#'))
        .any(|l| l.starts_with("# Generated by") && l.contains("(nf_tables)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: u16, body: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&((NLMSG_HDRLEN + body.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(body);
        m
    }

    fn newgen(attrs: &[u8]) -> Vec<u8> {
        let mut body = vec![0u8; NFGENMSG_LEN];
        body.extend_from_slice(attrs);
        message((SUBSYS_NFTABLES << 8) | MSG_NEWGEN, &body)
    }

    fn attr(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
        a.extend_from_slice(&kind.to_ne_bytes());
        a.extend_from_slice(value);
        while a.len() % 4 != 0 {
            a.push(0);
        }
        a
    }

    #[test]
    fn request_is_a_getgen() {
        let r = request(7);
        assert_eq!(u32_at(&r, 0), Some(20));
        assert_eq!(u16_at(&r, 4), Some(0x0a10));
        assert_eq!(u16_at(&r, 6), Some(NLM_F_REQUEST));
        assert_eq!(u32_at(&r, 8), Some(7));
    }

    #[test]
    fn generation_from_an_answer() {
        // Kernels put the process id and name after the id; the order is not relied on.
        let mut attrs = attr(2, &1234u32.to_be_bytes());
        attrs.extend(attr(3, b"nft\0"));
        attrs.extend(attr(ATTR_GEN_ID, &0x0102_0304u32.to_be_bytes()));
        assert_eq!(parse_answer(&newgen(&attrs)), Ok(0x0102_0304));
    }

    #[test]
    fn errors_and_garbage_are_errors() {
        let eperm = message(NLMSG_ERROR, &(-1i32).to_ne_bytes());
        assert!(
            matches!(parse_answer(&eperm), Err(GenerationError::Refused(m)) if m.contains("EPERM"))
        );
        assert!(parse_answer(&[]).is_err());
        assert!(parse_answer(&newgen(&[])).is_err());
        let mut short = newgen(&attr(ATTR_GEN_ID, &[1, 2]));
        assert!(parse_answer(&short).is_err());
        short.truncate(18);
        assert!(parse_answer(&short).is_err());
        // A length field pointing past the end.
        let mut lying = newgen(&attr(ATTR_GEN_ID, &5u32.to_be_bytes()));
        if let Some(b) = lying.get_mut(0) {
            *b = 0xff;
        }
        assert!(parse_answer(&lying).is_err());
        // Zero-length attribute: refused, not looped on.
        assert!(parse_answer(&newgen(&[0, 0, 1, 0, 0, 0, 0, 0])).is_err());
    }

    #[test]
    fn only_nf_tables_saves_are_covered() {
        assert!(is_nf_tables_save(
            "# Generated by iptables-save v1.8.9 (nf_tables) on Sun Nov 22 09:14:02 2026\n*nat\n"
        ));
        assert!(!is_nf_tables_save(
            "# Generated by iptables-save v1.8.9 on Sun Nov 22 09:14:02 2026\n*nat\n"
        ));
        assert!(!is_nf_tables_save("*nat\n# Generated by (nf_tables)\n"));
        assert!(!is_nf_tables_save(""));
    }
}
