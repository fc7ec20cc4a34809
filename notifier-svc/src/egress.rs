//! The egress guard: which addresses outbound webhooks may reach.
//!
//! Checked on every resolved address (a custom resolver, so a DNS answer cannot smuggle a
//! forbidden address past a check made earlier) and on IP-literal URLs.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::EgressConfig;

/// A CIDR network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl Network {
    /// Parses `10.0.0.0/8`, `fd00::/8` or a single address.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("`{text}` is not an address or network"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{text}`: prefix must be 0..={max}"))?,
        };
        Ok(Self { addr, prefix })
    }

    /// Whether `ip` lies in the network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// Addresses of cloud instance-metadata services outside link-local space.
const METADATA: &[IpAddr] = &[
    // AWS IMDS over IPv6.
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)),
    // Alibaba Cloud.
    IpAddr::V4(Ipv4Addr::new(100, 100, 100, 200)),
];

/// Decides whether an address may be contacted.
#[derive(Debug, Clone)]
pub struct EgressGuard {
    allow_loopback: bool,
    allow: Vec<Network>,
}

impl EgressGuard {
    /// The guard of a validated configuration.
    pub fn new(config: &EgressConfig) -> Self {
        Self {
            allow_loopback: config.allow_loopback,
            allow: config
                .allow_networks
                .iter()
                .filter_map(|n| Network::parse(n).ok())
                .collect(),
        }
    }

    /// `Err` with the reason when `ip` must not be contacted.
    pub fn check(&self, ip: IpAddr) -> Result<(), String> {
        let ip = canonical(ip);
        if self.allow.iter().any(|n| n.contains(ip)) {
            return Ok(());
        }
        let refuse = |why: &str| Err(format!("egress to {ip} refused: {why}"));
        if METADATA.contains(&ip) {
            return refuse("cloud metadata address");
        }
        match ip {
            IpAddr::V4(v4) => {
                if v4.is_link_local() {
                    return refuse("link-local address (169.254.0.0/16)");
                }
                if v4.is_unspecified() || v4.is_broadcast() || v4.is_multicast() {
                    return refuse("not a unicast address");
                }
                if v4.is_loopback() && !self.allow_loopback {
                    return refuse("loopback address (set egress.allow_loopback to allow)");
                }
            }
            IpAddr::V6(v6) => {
                if (v6.segments()[0] & 0xffc0) == 0xfe80 {
                    return refuse("link-local address (fe80::/10)");
                }
                if v6.is_unspecified() || v6.is_multicast() {
                    return refuse("not a unicast address");
                }
                if v6.is_loopback() && !self.allow_loopback {
                    return refuse("loopback address (set egress.allow_loopback to allow)");
                }
            }
        }
        Ok(())
    }
}

/// IPv4-mapped IPv6 addresses as the IPv4 address they carry.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(loopback: bool, allow: &[&str]) -> EgressGuard {
        EgressGuard::new(&EgressConfig {
            allow_loopback: loopback,
            allow_networks: allow.iter().map(|s| s.to_string()).collect(),
        })
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn link_local_metadata_and_loopback_are_refused_by_default() {
        let g = guard(false, &[]);
        for bad in [
            "169.254.169.254",
            "169.254.1.1",
            "fe80::1",
            "fd00:ec2::254",
            "100.100.100.200",
            "::ffff:169.254.169.254",
            "127.0.0.1",
            "::1",
            "0.0.0.0",
        ] {
            assert!(g.check(ip(bad)).is_err(), "{bad}");
        }
        for good in ["10.1.2.3", "192.168.0.1", "93.184.216.34", "2001:db8::1"] {
            assert!(g.check(ip(good)).is_ok(), "{good}");
        }
    }

    #[test]
    fn loopback_and_allowlist_are_opt_in() {
        let g = guard(true, &["169.254.10.0/24"]);
        assert!(g.check(ip("127.0.0.1")).is_ok());
        assert!(g.check(ip("::1")).is_ok());
        assert!(g.check(ip("169.254.10.7")).is_ok());
        assert!(g.check(ip("169.254.169.254")).is_err());
        assert!(Network::parse("10.0.0.0/33").is_err());
        assert!(Network::parse("nonsense").is_err());
        assert!(Network::parse("::/0").is_ok_and(|n| n.contains(ip("2001:db8::1"))));
    }
}
