//! The egress guard: which addresses outbound HTTP of every service may reach (notifier
//! deliveries, lifecycle's webhook steps), and the one way to build a client that honours it.
//!
//! Checked on every resolved address (a custom resolver, so a DNS answer cannot smuggle a
//! forbidden address past a check made earlier) and on IP-literal URLs. Clients built by
//! [`http_client`] never follow redirects: a `302 Location: http://127.0.0.1/admin` would
//! otherwise take a request where the guard refused to send it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, Validate};

/// Which addresses outbound HTTP may reach. Link-local and cloud-metadata addresses, and
/// addresses that are not unicast, are always refused unless a network of `allow_networks`
/// contains them; loopback is refused unless `allow_loopback` is set (tests and
/// single-machine setups set it on purpose); private ranges (RFC 1918, carrier-grade NAT,
/// unique-local IPv6) are refused when `deny_private` is set.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default, schemars::JsonSchema)]
#[serde(default)]
pub struct EgressConfig {
    /// Allow 127.0.0.0/8 and ::1.
    pub allow_loopback: bool,
    /// Refuse 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, 100.64.0.0/10 and fc00::/7.
    pub deny_private: bool,
    /// Networks (`10.1.2.0/24`, `fd00::/8`, or single addresses) allowed even when a rule
    /// above would refuse them.
    pub allow_networks: Vec<String>,
}

impl Validate for EgressConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        for (i, net) in self.allow_networks.iter().enumerate() {
            Network::parse(net)
                .map_err(|e| ConfigError::field(&format!("egress.allow_networks[{i}]"), e))?;
        }
        Ok(())
    }
}

/// A CIDR network (`ipnet`), or a single address as its /32 or /128.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network(ipnet::IpNet);

impl Network {
    /// Parses `10.0.0.0/8`, `fd00::/8` or a single address.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if let Ok(net) = text.parse::<ipnet::IpNet>() {
            return Ok(Self(net));
        }
        match text.parse::<IpAddr>() {
            Ok(ip) => Ok(Self(ipnet::IpNet::from(ip))),
            Err(_) if text.contains('/') => Err(format!(
                "`{text}` is not a network: an address and a prefix of 0..=32 (IPv4) or \
                 0..=128 (IPv6)"
            )),
            Err(_) => Err(format!("`{text}` is not an address or network")),
        }
    }

    /// Whether `ip` lies in the network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(&canonical(ip))
    }
}

/// Private ranges, refused with `deny_private`.
const PRIVATE: &[&str] = &[
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "fc00::/7",
];

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
    deny_private: bool,
    allow: Vec<Network>,
}

impl EgressGuard {
    /// The guard of a validated configuration.
    pub fn new(config: &EgressConfig) -> Self {
        Self {
            allow_loopback: config.allow_loopback,
            deny_private: config.deny_private,
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
        if self.deny_private
            && PRIVATE
                .iter()
                .filter_map(|n| Network::parse(n).ok())
                .any(|n| n.contains(ip))
        {
            return refuse("private address (egress.deny_private is set)");
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

impl EgressGuard {
    /// Refuses a URL whose host is an address the guard refuses (names are checked when they
    /// resolve, by the client's resolver); also refuses what is not `http`/`https`.
    pub fn check_url(&self, url: &reqwest::Url) -> Result<(), String> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "{} is not an http:// or https:// URL",
                url.scheme()
            ));
        }
        let Some(host) = url.host_str() else {
            return Err("the URL has no host".into());
        };
        match host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            Ok(ip) => self.check(ip),
            Err(_) => Ok(()),
        }
    }
}

/// An HTTP client that reaches only what `guard` allows: every resolved address is checked,
/// redirects are never followed (a 3xx is the answer), and `builder`'s other settings
/// (timeouts, user agent) are kept. Check IP-literal URLs with [`EgressGuard::check_url`]:
/// they are not resolved.
pub fn http_client(
    guard: Arc<EgressGuard>,
    builder: reqwest::ClientBuilder,
) -> reqwest::Result<reqwest::Client> {
    builder
        .use_rustls_tls()
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(Arc::new(GuardedResolver { guard }))
        .build()
}

/// The status line of an answer, all an error may quote of it: a body can hold anything the
/// receiver (or whatever a redirect pointed at) chose to show.
pub fn status_line(status: reqwest::StatusCode) -> String {
    format!(
        "HTTP {} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    )
    .trim_end()
    .to_owned()
}

/// Resolves host names and drops addresses the guard refuses, so DNS cannot route a request
/// to a forbidden address.
struct GuardedResolver {
    guard: Arc<EgressGuard>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let guard = self.guard.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refusal = None;
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| match guard.check(a.ip()) {
                    Ok(()) => true,
                    Err(e) => {
                        refusal = Some(e);
                        false
                    }
                })
                .collect();
            if allowed.is_empty() {
                let why = refusal.unwrap_or_else(|| format!("{host} has no address"));
                return Err(why.into());
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
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
            deny_private: false,
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

    #[test]
    fn private_ranges_are_refused_when_configured() {
        let g = EgressGuard::new(&EgressConfig {
            deny_private: true,
            allow_networks: vec!["10.9.0.0/16".into()],
            ..EgressConfig::default()
        });
        for bad in [
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "fd12::1",
        ] {
            assert!(g.check(ip(bad)).is_err(), "{bad}");
        }
        assert!(g.check(ip("10.9.1.1")).is_ok());
        assert!(g.check(ip("93.184.216.34")).is_ok());
    }

    #[test]
    fn urls_with_refused_literals_are_refused() {
        let g = guard(false, &[]);
        let url = |s: &str| reqwest::Url::parse(s).expect("url");
        assert!(g.check_url(&url("http://169.254.169.254/latest")).is_err());
        assert!(g.check_url(&url("http://[::1]:8080/")).is_err());
        assert!(g.check_url(&url("http://127.0.0.1:9/")).is_err());
        assert!(g.check_url(&url("file:///etc/passwd")).is_err());
        assert!(g.check_url(&url("https://hooks.example.com/x")).is_ok());
    }
}
