//! Which address a request comes from: the socket peer, or, when the peer is a trusted
//! proxy, the last untrusted hop of `X-Forwarded-For` (or `Forwarded`). Every per-IP limit
//! is keyed on this, so a client that is not a trusted proxy cannot choose its own key.

use hyper::HeaderMap;
use ipnet::IpNet;
use std::net::IpAddr;

/// The client address of a request from `peer` with `headers`.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let mut hops: Vec<IpAddr> = Vec::new();
    let xff: Vec<_> = headers.get_all("x-forwarded-for").iter().collect();
    if xff.is_empty() {
        for v in headers.get_all("forwarded") {
            let Ok(v) = v.to_str() else { return peer };
            for element in v.split(',') {
                let hop = element.split(';').find_map(|pair| {
                    let (k, v) = pair.trim().split_once('=')?;
                    k.eq_ignore_ascii_case("for")
                        .then(|| parse_forwarded_for(v))
                });
                match hop {
                    Some(Some(ip)) => hops.push(ip),
                    // An obfuscated or unknown hop: nothing before it can be believed.
                    _ => hops.clear(),
                }
            }
        }
    } else {
        for v in xff {
            let Ok(v) = v.to_str() else { return peer };
            for part in v.split(',') {
                match part.trim().parse::<IpAddr>() {
                    Ok(ip) => hops.push(ip),
                    Err(_) => hops.clear(),
                }
            }
        }
    }
    // Walk from the nearest hop back; the first one we do not trust is the client.
    let mut client = peer;
    for hop in hops.into_iter().rev() {
        client = hop;
        if !is_trusted(&hop) {
            break;
        }
    }
    client
}

fn parse_forwarded_for(v: &str) -> Option<IpAddr> {
    let v = v.trim().trim_matches('"');
    if let Some(rest) = v.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    let host = match v.split_once(':') {
        Some((h, _)) if v.matches(':').count() == 1 => h,
        _ => v,
    };
    host.parse().ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn h(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, v.parse().unwrap());
        }
        m
    }

    #[test]
    fn untrusted_peers_cannot_choose_their_address() {
        let peer: IpAddr = "203.0.113.9".parse().unwrap();
        let trusted = ["10.0.0.0/8".parse().unwrap()];
        let headers = h(&[("x-forwarded-for", "1.2.3.4")]);
        assert_eq!(client_ip(peer, &headers, &trusted), peer);
    }

    #[test]
    fn trusted_peers_give_the_last_untrusted_hop() {
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let trusted = ["10.0.0.0/8".parse().unwrap()];
        let headers = h(&[("x-forwarded-for", "6.6.6.6, 1.2.3.4, 10.0.0.7")]);
        assert_eq!(
            client_ip(peer, &headers, &trusted),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
        let headers = h(&[(
            "forwarded",
            "for=6.6.6.6, for=\"[2001:db8::1]:443\";proto=https",
        )]);
        assert_eq!(
            client_ip(peer, &headers, &trusted),
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
        let headers = h(&[("forwarded", "for=1.2.3.4:80")]);
        assert_eq!(
            client_ip(peer, &headers, &trusted),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
        // Every hop trusted: the farthest one.
        let headers = h(&[("x-forwarded-for", "10.1.1.1, 10.2.2.2")]);
        assert_eq!(
            client_ip(peer, &headers, &trusted),
            "10.1.1.1".parse::<IpAddr>().unwrap()
        );
        // Garbage in the chain: nothing before it is believed.
        let headers = h(&[("x-forwarded-for", "1.2.3.4, junk")]);
        assert_eq!(client_ip(peer, &headers, &trusted), peer);
    }
}
