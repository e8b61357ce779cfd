//! SSRF guard: webhook URLs must not reach loopback, private, link-local, unique-local or cloud
//! metadata addresses unless the operator allows it. Checked on the resolved addresses at
//! delivery time, inside the HTTP client's resolver, so a DNS answer that changes between check
//! and connect (rebinding) cannot slip through.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::dns::Name;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum GuardError {
    #[error("webhook URLs must be http or https, got {0:?}")]
    Scheme(String),
    #[error("invalid webhook URL: {0}")]
    Url(String),
    #[error("refused: {host} resolves to {addr}, a {kind} address (set webhooks.allow_private or webhooks.allow_hosts to allow it)")]
    Forbidden {
        host: String,
        addr: IpAddr,
        kind: &'static str,
    },
}

/// Which destinations are allowed.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub allow_private: bool,
    /// Hosts (names or IP literals) allowed even when they resolve to forbidden addresses.
    pub allow_hosts: Vec<String>,
}

impl Policy {
    fn host_allowed(&self, host: &str) -> bool {
        self.allow_private
            || self
                .allow_hosts
                .iter()
                .any(|h| h.eq_ignore_ascii_case(host))
    }

    /// Checks what can be checked without DNS: scheme, and IP-literal hosts.
    pub fn check_url(&self, url: &str) -> Result<reqwest::Url, GuardError> {
        let parsed = reqwest::Url::parse(url).map_err(|e| GuardError::Url(e.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(GuardError::Scheme(parsed.scheme().to_string()));
        }
        let host = match parsed.host() {
            Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
            Some(url::Host::Domain(_)) => None,
            None => return Err(GuardError::Url("the URL has no host".into())),
        };
        if let Some(ip) = host {
            self.check_addr(parsed.host_str().unwrap_or_default(), ip)?;
        }
        Ok(parsed)
    }

    pub fn check_addr(&self, host: &str, addr: IpAddr) -> Result<(), GuardError> {
        match forbidden_kind(addr) {
            Some(kind) if !self.host_allowed(host) && !self.host_allowed(&addr.to_string()) => {
                Err(GuardError::Forbidden {
                    host: host.to_string(),
                    addr,
                    kind,
                })
            }
            _ => Ok(()),
        }
    }
}

/// Classifies addresses a webhook must not reach by default: anything but global unicast.
/// IPv6 forms that carry an IPv4 address (mapped, compatible, NAT64, 6to4) are judged by the
/// IPv4 address inside, since that is where a translator or relay would connect.
pub fn forbidden_kind(addr: IpAddr) -> Option<&'static str> {
    match addr {
        IpAddr::V4(ip) => v4_kind(ip),
        IpAddr::V6(ip) => v6_kind(ip),
    }
}

fn embedded_v4(ip: Ipv6Addr, at: usize) -> Ipv4Addr {
    let o = ip.octets();
    Ipv4Addr::new(o[at], o[at + 1], o[at + 2], o[at + 3])
}

fn v6_kind(ip: Ipv6Addr) -> Option<&'static str> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return v4_kind(v4);
    }
    let seg = ip.segments();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_unspecified() {
        Some("unspecified")
    } else if seg[..6].iter().all(|&s| s == 0) {
        // IPv4-compatible (::a.b.c.d, deprecated): never a real destination.
        Some("IPv4-compatible")
    } else if seg[0] & 0xfe00 == 0xfc00 {
        Some("unique-local")
    } else if seg[0] & 0xffc0 == 0xfe80 {
        Some("link-local")
    } else if seg[0] & 0xffc0 == 0xfec0 {
        Some("site-local")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        // NAT64 well-known prefix: the translator connects to the IPv4 address inside.
        v4_kind(embedded_v4(ip, 12))
    } else if seg[0] == 0x64 && seg[1] == 0xff9b && seg[2] == 1 {
        Some("NAT64 local-use")
    } else if seg[0] == 0x2002 {
        // 6to4: the relay connects to the IPv4 address in bits 16-47.
        v4_kind(embedded_v4(ip, 2))
    } else if seg[0] == 0x2001 && seg[1] == 0 {
        Some("Teredo")
    } else if seg[0] == 0x2001 && seg[1] == 0xdb8 {
        Some("documentation")
    } else if seg[0] & 0xe000 != 0x2000 {
        // Outside 2000::/3, the only block of global unicast addresses.
        Some("reserved")
    } else {
        None
    }
}

fn v4_kind(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip == Ipv4Addr::new(169, 254, 169, 254) || ip == Ipv4Addr::new(100, 100, 100, 200) {
        Some("cloud metadata")
    } else if ip.is_link_local() {
        Some("link-local")
    } else if ip.is_private() || (o[0] == 100 && (o[1] & 0xc0) == 64) {
        Some("private")
    } else if ip.is_unspecified() || o[0] == 0 {
        Some("unspecified")
    } else if ip.is_broadcast() || ip.is_multicast() {
        Some("broadcast or multicast")
    } else if o[0] == 198 && (o[1] & 0xfe) == 18 {
        Some("benchmarking")
    } else if o[0] == 192 && o[1] == 0 && o[2] == 0 {
        Some("IETF protocol assignment")
    } else if o[0] >= 240 {
        Some("reserved")
    } else if matches!(
        (o[0], o[1], o[2]),
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113)
    ) {
        Some("documentation")
    } else {
        None
    }
}

/// The webhook client's DNS: every address a name resolves to is checked, and one forbidden
/// address refuses the name (so a round-robin answer cannot smuggle one in).
#[derive(Clone)]
pub struct GuardedResolver {
    pub policy: Arc<Policy>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl GuardedResolver {
    pub async fn resolve(&self, host: &str) -> Result<Vec<SocketAddr>, BoxError> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, 0)).await?.collect();
        for addr in &addrs {
            self.policy.check_addr(host, addr.ip())?;
        }
        Ok(addrs)
    }
}

impl tower::Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let resolver = self.clone();
        Box::pin(async move { Ok(resolver.resolve(name.as_str()).await?.into_iter()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(url: &str, policy: &Policy) -> Result<(), GuardError> {
        policy.check_url(url).map(|_| ())
    }

    #[test]
    fn forbidden_addresses() {
        for (ip, kind) in [
            ("127.0.0.1", Some("loopback")),
            ("10.1.2.3", Some("private")),
            ("172.16.0.1", Some("private")),
            ("192.168.1.1", Some("private")),
            ("100.64.0.1", Some("private")),
            ("169.254.169.254", Some("cloud metadata")),
            ("169.254.1.1", Some("link-local")),
            ("0.0.0.0", Some("unspecified")),
            ("::1", Some("loopback")),
            ("fd00::1", Some("unique-local")),
            ("fe80::1", Some("link-local")),
            ("::ffff:127.0.0.1", Some("loopback")),
            ("fd00:ec2::254", Some("unique-local")),
            ("198.18.0.1", Some("benchmarking")),
            ("198.19.255.255", Some("benchmarking")),
            ("192.0.0.8", Some("IETF protocol assignment")),
            ("240.0.0.1", Some("reserved")),
            ("255.255.255.254", Some("reserved")),
            ("fec0::1", Some("site-local")),
            ("64:ff9b::7f00:1", Some("loopback")),
            ("64:ff9b::a9fe:a9fe", Some("cloud metadata")),
            ("64:ff9b::5db8:d822", None),
            ("64:ff9b:1::1", Some("NAT64 local-use")),
            ("2002:7f00:1::1", Some("loopback")),
            ("2002:c0a8:101::1", Some("private")),
            ("2002:5db8:d822::1", None),
            ("::127.0.0.1", Some("IPv4-compatible")),
            ("::8.8.8.8", Some("IPv4-compatible")),
            ("2001::1", Some("Teredo")),
            ("2001:db8::1", Some("documentation")),
            ("4000::1", Some("reserved")),
            ("93.184.216.34", None),
            ("2606:4700::1111", None),
        ] {
            assert_eq!(forbidden_kind(ip.parse().unwrap()), kind, "{ip}");
        }
    }

    /// The delivery-time check: a real DNS answer (localhost, from /etc/hosts) for a host name
    /// that no URL check could have caught.
    #[tokio::test]
    async fn resolver_refuses_names_that_resolve_to_loopback() {
        let strict = GuardedResolver {
            policy: Arc::new(Policy::default()),
        };
        let err = match strict.resolve("localhost").await {
            Ok(_) => panic!("localhost must be refused"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("loopback"), "{err}");
        let open = GuardedResolver {
            policy: Arc::new(Policy {
                allow_private: true,
                ..Policy::default()
            }),
        };
        assert!(open.resolve("localhost").await.is_ok());
    }

    #[test]
    fn url_checks() {
        let strict = Policy::default();
        assert!(matches!(
            check("http://127.0.0.1:9/x", &strict),
            Err(GuardError::Forbidden { .. })
        ));
        assert!(matches!(
            check("http://169.254.169.254/latest", &strict),
            Err(GuardError::Forbidden { .. })
        ));
        assert!(matches!(
            check("http://[::1]/", &strict),
            Err(GuardError::Forbidden { .. })
        ));
        assert!(matches!(
            check("ftp://example.com/", &strict),
            Err(GuardError::Scheme(_))
        ));
        assert!(matches!(
            check("not a url", &strict),
            Err(GuardError::Url(_))
        ));
        assert_eq!(check("https://example.com/hook", &strict), Ok(()));
        let listed = Policy {
            allow_private: false,
            allow_hosts: vec!["127.0.0.1".into()],
        };
        assert_eq!(check("http://127.0.0.1:9/x", &listed), Ok(()));
        assert_eq!(
            check(
                "http://10.0.0.1/",
                &Policy {
                    allow_private: true,
                    ..Policy::default()
                }
            ),
            Ok(())
        );
    }
}
