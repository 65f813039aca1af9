//! Can this VM reach the control plane? DNS first, then TCP, each with a short timeout, so the
//! finding can say which step failed (the guide names both: firewall on 443, or DNS).

use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;

use crate::config::HostPort;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Reachability {
    Reachable { addr: String },
    DnsFailed { host: String, error: String },
    TcpFailed { addrs: Vec<String>, error: String },
}

impl Reachability {
    pub fn is_reachable(&self) -> bool {
        matches!(self, Reachability::Reachable { .. })
    }
}

/// Resolves `target` and connects to its addresses in turn (at most 4), each step bounded.
pub async fn check(
    target: &HostPort,
    dns_timeout: Duration,
    tcp_timeout: Duration,
) -> Reachability {
    let authority = target.to_string();
    let addrs: Vec<SocketAddr> = match tokio::time::timeout(
        dns_timeout,
        tokio::net::lookup_host(authority.as_str()),
    )
    .await
    {
        Ok(Ok(addrs)) => addrs.take(4).collect(),
        Ok(Err(e)) => {
            return Reachability::DnsFailed {
                host: target.host.clone(),
                error: e.to_string(),
            };
        }
        Err(_) => {
            return Reachability::DnsFailed {
                host: target.host.clone(),
                error: format!("no answer within {dns_timeout:?}"),
            };
        }
    };
    if addrs.is_empty() {
        return Reachability::DnsFailed {
            host: target.host.clone(),
            error: "no addresses".into(),
        };
    }
    let mut last_error = String::new();
    for addr in &addrs {
        match tokio::time::timeout(tcp_timeout, super::own_traffic::connect_addr(*addr)).await {
            Ok(Ok(_)) => {
                return Reachability::Reachable {
                    addr: addr.to_string(),
                };
            }
            Ok(Err(e)) => last_error = e.to_string(),
            Err(_) => last_error = format!("no answer within {tcp_timeout:?}"),
        }
    }
    Reachability::TcpFailed {
        addrs: addrs.iter().map(ToString::to_string).collect(),
        error: last_error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hp(host: &str, port: u16) -> HostPort {
        HostPort {
            host: host.into(),
            port,
        }
    }

    #[tokio::test]
    async fn reachable_refused_and_unresolvable() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let t = Duration::from_secs(2);
        assert!(check(&hp("127.0.0.1", port), t, t).await.is_reachable());
        drop(l);
        assert!(matches!(
            check(&hp("127.0.0.1", port), t, t).await,
            Reachability::TcpFailed { .. }
        ));
        // RFC 6761: .invalid never resolves.
        assert!(matches!(
            check(&hp("trafficdirector.invalid", 443), t, t).await,
            Reachability::DnsFailed { .. }
        ));
    }
}
