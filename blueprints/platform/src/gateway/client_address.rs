//! The client's address as the gateway counts it (the per-address rate limit, the budget
//! of failed authentications): the TCP peer's, or, when the peer is a proxy the operator
//! trusts (an Ingress, a load balancer: `GATEWAY__TRUSTED_PROXIES`, CIDRs, none by
//! default), the address that proxy put in `X-Forwarded-For`. Without it every client
//! behind an Ingress shares the Ingress's address, and one of them throttles all; with an
//! untrusted peer the header is ignored, since anyone can send it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use ipnet::IpNet;

/// The proxies whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// A comma-separated list of CIDRs (`10.0.0.0/8, 192.168.1.7/32`); a bare address is
    /// one host. Empty: no proxy is trusted.
    pub fn parse(list: &str) -> Result<TrustedProxies, String> {
        list.split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(|item| {
                item.parse::<IpNet>()
                    .or_else(|_| item.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        format!("`{item}` is not a CIDR (such as 10.0.0.0/8) or an address")
                    })
            })
            .collect::<Result<_, _>>()
            .map(TrustedProxies)
    }

    fn trusts(&self, address: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&address))
    }

    /// The client of a request from `peer`: walking `X-Forwarded-For` from its end (the
    /// hop nearest to us), the first address that is not a trusted proxy. The peer itself
    /// when it is not trusted, or when the header says nothing usable.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.trusts(peer) {
            return peer;
        }
        let hops: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(str::trim)
            .collect();
        let mut client = peer;
        for hop in hops.iter().rev() {
            match hop.parse::<IpAddr>() {
                Ok(address) => {
                    client = address;
                    if !self.trusts(address) {
                        break;
                    }
                }
                // A hop we cannot read: nothing to its left can be believed.
                Err(_) => break,
            }
        }
        client
    }
}

/// The client's address, in the request's extensions once [`resolve`] ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddress(pub IpAddr);

/// Puts the [`ClientAddress`] of a request in its extensions. A request without a known
/// peer (tests driving the router directly) gets none.
pub async fn resolve(
    State(trusted): State<Arc<TrustedProxies>>,
    mut request: Request,
    next: Next,
) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip());
    if let Some(peer) = peer {
        let client = trusted.client(peer, request.headers());
        request.extensions_mut().insert(ClientAddress(client));
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forwarded(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", value.parse().unwrap());
        headers
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn the_header_is_believed_only_from_a_trusted_proxy() {
        let none = TrustedProxies::parse("").unwrap();
        let ingress = TrustedProxies::parse("10.0.0.0/8, 192.168.1.7").unwrap();
        let headers = forwarded("203.0.113.9");
        // No proxy trusted (the default): the header is anyone's to forge.
        assert_eq!(none.client(ip("10.1.2.3"), &headers), ip("10.1.2.3"));
        // From the Ingress: the client it names.
        assert_eq!(ingress.client(ip("10.1.2.3"), &headers), ip("203.0.113.9"));
        assert_eq!(
            ingress.client(ip("192.168.1.7"), &headers),
            ip("203.0.113.9")
        );
        // From anyone else: the peer, whatever the header says.
        assert_eq!(
            ingress.client(ip("198.51.100.4"), &headers),
            ip("198.51.100.4")
        );
        // No header: the peer.
        assert_eq!(
            ingress.client(ip("10.1.2.3"), &HeaderMap::new()),
            ip("10.1.2.3")
        );
    }

    #[test]
    fn the_client_is_the_last_hop_that_no_trusted_proxy_added() {
        let proxies = TrustedProxies::parse("10.0.0.0/8").unwrap();
        // The client forged a first entry; the proxies appended the real ones after it.
        let headers = forwarded("1.2.3.4, 203.0.113.9, 10.0.0.5");
        assert_eq!(proxies.client(ip("10.0.0.6"), &headers), ip("203.0.113.9"));
        let mut split = HeaderMap::new();
        split.append("x-forwarded-for", "1.2.3.4".parse().unwrap());
        split.append("x-forwarded-for", "203.0.113.9".parse().unwrap());
        assert_eq!(proxies.client(ip("10.0.0.6"), &split), ip("203.0.113.9"));
        // Garbage stops the walk at the last address that could be read.
        assert_eq!(
            proxies.client(
                ip("10.0.0.6"),
                &forwarded("203.0.113.9, nonsense, 10.0.0.5")
            ),
            ip("10.0.0.5")
        );
        assert_eq!(
            proxies.client(ip("::1"), &forwarded("203.0.113.9")),
            ip("::1"),
            "an IPv6 peer outside the list"
        );
    }

    #[test]
    fn a_list_that_does_not_parse_names_the_item() {
        let error = TrustedProxies::parse("10.0.0.0/8, ten.0.0.1").unwrap_err();
        assert!(error.contains("`ten.0.0.1`"), "{error}");
        assert_eq!(
            TrustedProxies::parse("").unwrap(),
            TrustedProxies::default()
        );
    }
}
