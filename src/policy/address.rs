//! Which network addresses clients may steer stevedore to.

use std::net::IpAddr;

/// Addresses a client must not be able to steer stevedore to unless a registry entry says
/// `allow-private-network = true`: loopback, unspecified, private (RFC 1918, RFC 4193),
/// shared (RFC 6598), link-local (which holds the 169.254.169.254 metadata service),
/// multicast and broadcast. IPv4-mapped IPv6 addresses are judged as their IPv4 address.
pub fn is_restricted_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_unspecified()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_broadcast()
                || o[0] == 0
                || (o[0] == 100 && (64..128).contains(&o[1]))
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_restricted_ip(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restricted_addresses() {
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:127.0.0.1",
            "224.0.0.1",
        ] {
            assert!(is_restricted_ip(bad.parse().unwrap()), "{bad}");
        }
        for good in ["1.1.1.1", "172.32.0.1", "2606:4700::1111", "100.128.0.1"] {
            assert!(!is_restricted_ip(good.parse().unwrap()), "{good}");
        }
    }
}
