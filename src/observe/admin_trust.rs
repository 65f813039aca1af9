//! Whether Envoy's admin may be believed (docs/contract.md#11-trust), and whose UID interception excludes.
//!
//! Any local user can listen on 127.0.0.1:15000 while Envoy is down and answer with listeners
//! of its choosing; believing it would let that user redirect root's traffic to itself. So the
//! admin is trusted only when the socket that serves `--envoy-admin` belongs to the Envoy
//! user, and the UID excluded from interception is that socket's owner, never a guess from
//! process names (a decoy `exec -a envoy sleep` is anyone's).
//!
//! The agent runs without `CAP_SYS_PTRACE`, so it cannot read `/proc/<pid>/fd` of Envoy to see
//! which process holds the socket; `/proc/net/tcp{,6}` still gives each listening socket's
//! owner UID (the kernel records the creator's UID; no user can forge another's). Who counts
//! as "the Envoy user":
//! - `--envoy-user`, when given;
//! - else the UID of a running process named `envoy`, and, when the system has a user named
//!   `envoy`, that user only (what the startup script and the guide's manual setup create).
//!   Without either, a process named `envoy` is all there is to go on: that bound is stated in
//!   the README (give `--envoy-user`).
//!
//! Decisions here are pure: the sockets, processes and users are read by the caller.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::observe::procfs::ListenSocket;

/// The verdict on the admin for one observation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminTrust {
    /// The socket serving the admin address belongs to the Envoy user `uid`.
    Trusted { uid: u32, inode: u64 },
    /// Not trusted, and why (one line, for `agent-last-failure`). `owner` is the serving
    /// socket's UID when there is one socket to name.
    Untrusted { owner: Option<u32>, why: String },
}

impl AdminTrust {
    pub fn uid(&self) -> Option<u32> {
        match self {
            AdminTrust::Trusted { uid, .. } => Some(*uid),
            AdminTrust::Untrusted { .. } => None,
        }
    }

    /// Whether some socket listens on the admin address (whoever owns it).
    pub fn something_listens(&self) -> bool {
        matches!(
            self,
            AdminTrust::Trusted { .. } | AdminTrust::Untrusted { owner: Some(_), .. }
        )
    }

    fn untrusted(owner: Option<u32>, why: String) -> AdminTrust {
        AdminTrust::Untrusted { owner, why }
    }
}

/// Who the Envoy user may be, as configured and as seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvoyUser {
    /// `--envoy-user`, resolved to a UID.
    Given(u32),
    /// `--envoy-user NAME` names no user.
    Unknown(String),
    /// Not given: the UIDs of the processes named `envoy` (`None` when /proc could not be
    /// listed) and the UID of the user named `envoy`, if there is one.
    Default {
        process_uids: Option<Vec<u32>>,
        user_envoy: Option<u32>,
    },
}

/// The addresses a client of `host` connects to: an IP literal, or both loopbacks for
/// `localhost`; empty for a name we cannot check here.
pub fn admin_addresses(host: &str) -> Vec<IpAddr> {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    if h.eq_ignore_ascii_case("localhost") {
        return vec![
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ];
    }
    h.parse::<IpAddr>().map(|a| vec![a]).unwrap_or_default()
}

/// The listening socket a connection to `addr` reaches among `sockets` (all LISTEN sockets on
/// the port), as the kernel chooses it: one bound to the address itself (an IPv4-mapped IPv6
/// one included), else the IPv4 wildcard, else the IPv6 wildcard (dual-stack). `Err` when the
/// winning group holds sockets of several owners, so the serving one cannot be told.
pub fn serving_socket(
    addr: IpAddr,
    sockets: &[ListenSocket],
) -> Result<Option<&ListenSocket>, String> {
    let exact = |s: &&ListenSocket| match (addr, s.local) {
        (a, l) if a == l => true,
        (IpAddr::V4(a), IpAddr::V6(l)) => l.to_ipv4_mapped() == Some(a),
        _ => false,
    };
    let v4_any = |s: &&ListenSocket| s.local == IpAddr::V4(Ipv4Addr::UNSPECIFIED) && addr.is_ipv4();
    let v6_any = |s: &&ListenSocket| s.local == IpAddr::V6(Ipv6Addr::UNSPECIFIED);
    let tiers: [&dyn Fn(&&ListenSocket) -> bool; 3] = [&exact, &v4_any, &v6_any];
    for tier in tiers {
        let group: Vec<&ListenSocket> = sockets.iter().filter(|s| tier(s)).collect();
        let Some(first) = group.first() else {
            continue;
        };
        if group.iter().any(|s| s.uid != first.uid) {
            let mut uids: Vec<u32> = group.iter().map(|s| s.uid).collect();
            uids.sort_unstable();
            uids.dedup();
            return Err(format!(
                "sockets of several owners (uids {}) listen on {addr} port {}, so the one answering cannot be told",
                uids.iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                first.port
            ));
        }
        return Ok(Some(first));
    }
    Ok(None)
}

/// The verdict for `admin` (`host:port` as configured, for messages), given the sockets
/// listening on its port and who the Envoy user may be.
pub fn judge(
    admin: &str,
    addrs: &[IpAddr],
    sockets: &[ListenSocket],
    user: &EnvoyUser,
) -> AdminTrust {
    if addrs.is_empty() {
        return AdminTrust::untrusted(
            None,
            format!(
                "{admin} is not an IP address or localhost, so the owner of its socket cannot be checked"
            ),
        );
    }
    let mut found: Option<&ListenSocket> = None;
    for a in addrs {
        match serving_socket(*a, sockets) {
            Err(why) => return AdminTrust::untrusted(None, why),
            Ok(None) => {}
            Ok(Some(s)) => match found {
                Some(f) if f.uid != s.uid => {
                    return AdminTrust::untrusted(
                        None,
                        format!(
                            "{admin} is served by sockets of uid {} and uid {}, so the one answering cannot be told",
                            f.uid, s.uid
                        ),
                    );
                }
                Some(_) => {}
                None => found = Some(s),
            },
        }
    }
    let Some(sock) = found else {
        return AdminTrust::untrusted(
            None,
            format!("no socket listens on {admin} in this network namespace (/proc/net/tcp, tcp6)"),
        );
    };
    let owner = sock.uid;
    let not = |why: String| {
        AdminTrust::untrusted(
            Some(owner),
            format!("the socket listening on {admin} belongs to uid {owner}, {why}"),
        )
    };
    match user {
        EnvoyUser::Given(uid) if *uid == owner => {}
        EnvoyUser::Given(uid) => {
            return not(format!("not to the Envoy user (uid {uid}, --envoy-user)"));
        }
        EnvoyUser::Unknown(name) => {
            return not(format!(
                "and --envoy-user {name} names no user on this system"
            ));
        }
        EnvoyUser::Default {
            process_uids,
            user_envoy,
        } => {
            match process_uids {
                None => {
                    return not(
                        "and the processes could not be listed to tell whether it runs envoy"
                            .into(),
                    );
                }
                Some(uids) if !uids.contains(&owner) => {
                    return not("which runs no process named envoy (give --envoy-user if Envoy runs as another name)".into());
                }
                Some(_) => {}
            }
            if let Some(e) = user_envoy
                && *e != owner
            {
                return not(format!(
                    "not to the user envoy (uid {e}); give --envoy-user if Envoy really runs as uid {owner}"
                ));
            }
        }
    }
    AdminTrust::Trusted {
        uid: owner,
        inode: sock.inode,
    }
}

/// Two readings around the admin's answers: trusted only if both trust the same socket (a
/// listener swapped while the agent read it might have answered).
pub fn both(before: AdminTrust, after: AdminTrust) -> AdminTrust {
    match (&before, &after) {
        (AdminTrust::Trusted { inode: a, .. }, AdminTrust::Trusted { inode: b, .. }) if a == b => after,
        (AdminTrust::Trusted { .. }, AdminTrust::Trusted { uid, .. }) => AdminTrust::untrusted(
            Some(*uid),
            "the socket listening on the admin address changed while the agent read it; not trusted this poll".into(),
        ),
        (AdminTrust::Untrusted { .. }, _) => before,
        (_, AdminTrust::Untrusted { .. }) => after,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sock(local: &str, uid: u32, inode: u64) -> ListenSocket {
        ListenSocket {
            local: local.parse().unwrap(),
            port: 15000,
            uid,
            inode,
        }
    }

    const LO: &[IpAddr] = &[IpAddr::V4(Ipv4Addr::LOCALHOST)];

    fn default_user(uids: &[u32], envoy: Option<u32>) -> EnvoyUser {
        EnvoyUser::Default {
            process_uids: Some(uids.to_vec()),
            user_envoy: envoy,
        }
    }

    #[test]
    fn the_kernels_choice_of_listener() {
        let s = [
            sock("::", 3, 30),
            sock("0.0.0.0", 2, 20),
            sock("127.0.0.1", 1, 10),
        ];
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        assert_eq!(serving_socket(lo, &s).unwrap().unwrap().uid, 1);
        assert_eq!(serving_socket(lo, &s[..2]).unwrap().unwrap().uid, 2);
        assert_eq!(serving_socket(lo, &s[..1]).unwrap().unwrap().uid, 3);
        assert_eq!(
            serving_socket("::1".parse().unwrap(), &s)
                .unwrap()
                .unwrap()
                .uid,
            3
        );
        assert_eq!(
            serving_socket("127.0.0.2".parse().unwrap(), &s[2..]).unwrap(),
            None
        );
        let mapped = [sock("::ffff:127.0.0.1", 7, 70)];
        assert_eq!(serving_socket(lo, &mapped).unwrap().unwrap().uid, 7);
        let two = [sock("0.0.0.0", 1, 1), sock("0.0.0.0", 2, 2)];
        assert!(serving_socket(lo, &two).unwrap_err().contains("uids 1, 2"));
        // Same owner twice (SO_REUSEPORT): fine.
        let same = [sock("127.0.0.1", 1, 1), sock("127.0.0.1", 1, 2)];
        assert_eq!(serving_socket(lo, &same).unwrap().unwrap().uid, 1);
    }

    #[test]
    fn a_foreign_owner_is_not_trusted() {
        let attacker = [sock("127.0.0.1", 65534, 9)];
        let a = "127.0.0.1:15000";
        // --envoy-user given and not the owner.
        let t = judge(a, LO, &attacker, &EnvoyUser::Given(1337));
        assert!(
            matches!(&t, AdminTrust::Untrusted { owner: Some(65534), why } if why.contains("not to the Envoy user (uid 1337")),
            "{t:?}"
        );
        // A process named envoy as the attacker, but the user envoy is someone else.
        let t = judge(a, LO, &attacker, &default_user(&[65534], Some(1337)));
        assert!(
            matches!(&t, AdminTrust::Untrusted { why, .. } if why.contains("not to the user envoy (uid 1337)")),
            "{t:?}"
        );
        // No process named envoy runs as the owner.
        let t = judge(a, LO, &attacker, &default_user(&[1337], None));
        assert!(
            matches!(&t, AdminTrust::Untrusted { why, .. } if why.contains("runs no process named envoy")),
            "{t:?}"
        );
        let t = judge(
            a,
            LO,
            &attacker,
            &EnvoyUser::Default {
                process_uids: None,
                user_envoy: None,
            },
        );
        assert!(matches!(t, AdminTrust::Untrusted { .. }));
        let t = judge(a, LO, &attacker, &EnvoyUser::Unknown("nosuch".into()));
        assert!(
            matches!(&t, AdminTrust::Untrusted { why, .. } if why.contains("nosuch")),
            "{t:?}"
        );
        // Nothing listening.
        let t = judge(a, LO, &[], &EnvoyUser::Given(1));
        assert!(!t.something_listens());
    }

    #[test]
    fn the_envoy_users_socket_is_trusted_and_names_the_uid() {
        let s = [sock("127.0.0.1", 1337, 9)];
        let a = "127.0.0.1:15000";
        assert_eq!(
            judge(a, LO, &s, &EnvoyUser::Given(1337)),
            AdminTrust::Trusted {
                uid: 1337,
                inode: 9
            }
        );
        // A decoy named envoy under another UID changes nothing: the socket's owner is the UID.
        assert_eq!(
            judge(a, LO, &s, &default_user(&[4242, 1337], Some(1337))).uid(),
            Some(1337)
        );
        assert_eq!(
            judge(a, LO, &s, &default_user(&[1337], None)).uid(),
            Some(1337)
        );
        // localhost: both loopbacks, same owner.
        let both_lo = [sock("127.0.0.1", 1337, 1), sock("::1", 1337, 2)];
        assert_eq!(
            judge(
                "localhost:15000",
                &admin_addresses("localhost"),
                &both_lo,
                &EnvoyUser::Given(1337)
            )
            .uid(),
            Some(1337)
        );
        let split = [sock("127.0.0.1", 1337, 1), sock("::1", 65534, 2)];
        assert_eq!(
            judge(
                "localhost:15000",
                &admin_addresses("localhost"),
                &split,
                &EnvoyUser::Given(1337)
            )
            .uid(),
            None
        );
        assert_eq!(
            judge(
                "envoy.internal:15000",
                &admin_addresses("envoy.internal"),
                &s,
                &EnvoyUser::Given(1337)
            )
            .uid(),
            None
        );
    }

    #[test]
    fn a_socket_swapped_between_readings_is_not_trusted() {
        let t = |inode| AdminTrust::Trusted { uid: 1, inode };
        assert_eq!(both(t(1), t(1)), t(1));
        assert!(both(t(1), t(2)).uid().is_none());
        let u = AdminTrust::Untrusted {
            owner: None,
            why: "x".into(),
        };
        assert!(both(u.clone(), t(1)).uid().is_none());
        assert!(both(t(1), u).uid().is_none());
    }
}
