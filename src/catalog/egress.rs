//! Egress policy for delivery URLs, decided here for the dispatcher (before sending and when
//! connecting) and the controller (in status) alike: link-local and cloud metadata addresses
//! are never allowed; private, loopback and cluster-internal addresses are allowed for handlers,
//! and for subscriptions only with `allowPrivateNetworks`. The operator's [`EgressRules`] come
//! first: a denied range is refused to every target whatever it opts into, and an allowed range
//! is reachable by every target without the opt-in.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipnet::IpNet;

/// The operator's egress ranges (`--egress-deny`, `--egress-allow`); tenants cannot change them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressRules {
    /// Never reached by any target; wins over `allow` and over `allowPrivateNetworks`.
    pub deny: Vec<IpNet>,
    /// Private ranges any target may reach without `allowPrivateNetworks`, such as an egress
    /// proxy. Link-local and metadata addresses stay forbidden even here.
    pub allow: Vec<IpNet>,
}

impl EgressRules {
    fn denied(&self, ip: IpAddr) -> Option<&IpNet> {
        self.deny.iter().find(|net| net.contains(&ip))
    }

    fn allowed(&self, ip: IpAddr) -> bool {
        self.allow.iter().any(|net| net.contains(&ip))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Egress {
    Public,
    /// Private, loopback or cluster-internal.
    Private(String),
    /// Never allowed.
    Forbidden(String),
}

const METADATA_HOSTS: [&str; 4] = [
    "metadata.google.internal",
    "metadata.goog",
    "metadata",
    "instance-data",
];

/// Where an address is, by the operator's rules first and then by the built-in ranges.
fn classify_ip(ip: IpAddr, rules: &EgressRules) -> Egress {
    let ip = unwrapped(ip);
    if let Some(net) = rules.denied(ip) {
        return Egress::Forbidden(format!("{ip} is in {net}, which the operator denies"));
    }
    match builtin(ip) {
        Egress::Private(_) if rules.allowed(ip) => Egress::Public,
        verdict => verdict,
    }
}

/// The IPv4 address an IPv4-mapped or NAT64 (64:ff9b::/96) IPv6 address reaches.
fn unwrapped(ip: IpAddr) -> IpAddr {
    let IpAddr::V6(v6) = ip else { return ip };
    if let Some(v4) = v6.to_ipv4_mapped() {
        return IpAddr::V4(v4);
    }
    let s = v6.segments();
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let [a, b] = s[6].to_be_bytes();
        let [c, d] = s[7].to_be_bytes();
        return IpAddr::V4(std::net::Ipv4Addr::new(a, b, c, d));
    }
    ip
}

fn builtin(ip: IpAddr) -> Egress {
    let forbidden = |why: &str| Egress::Forbidden(format!("{ip} is {why}"));
    let private = |why: &str| Egress::Private(format!("{ip} is {why}"));
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            if v4.is_link_local() {
                forbidden("a link-local address (cloud metadata services live there)")
            } else if o == [100, 100, 100, 200] {
                forbidden("a cloud metadata address")
            } else if v4.is_unspecified() || v4.is_broadcast() || v4.is_multicast() {
                forbidden("not a unicast address")
            } else if v4.is_loopback() {
                private("a loopback address")
            } else if v4.is_private() || (o[0] == 100 && (64..128).contains(&o[1])) {
                private("a private address")
            } else {
                Egress::Public
            }
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            let aws_metadata = std::net::Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);
            if (first & 0xffc0) == 0xfe80 || v6 == aws_metadata {
                forbidden("a link-local or metadata address")
            } else if v6.is_unspecified() || v6.is_multicast() {
                forbidden("not a unicast address")
            } else if v6.is_loopback() {
                private("a loopback address")
            } else if (first & 0xfe00) == 0xfc00 {
                private("a unique local (private) address")
            } else {
                Egress::Public
            }
        }
    }
}

/// Classifies where a URL points: its literal address, well-known names, or what its host
/// name resolves to now (a name that does not resolve here is judged by its form alone).
/// Cluster-internal names are looked up only when the operator denies ranges (the controller
/// may run where they do not resolve); the connection is checked again in any case.
pub async fn classify(url: &str, rules: &EgressRules) -> Egress {
    let Ok(parsed) = url::Url::parse(url) else {
        return Egress::Forbidden(format!("{url} is not a valid URL"));
    };
    let port = parsed.port_or_known_default().unwrap_or(443);
    match parsed.host() {
        Some(url::Host::Ipv4(ip)) => classify_ip(IpAddr::V4(ip), rules),
        Some(url::Host::Ipv6(ip)) => classify_ip(IpAddr::V6(ip), rules),
        Some(url::Host::Domain(name)) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if METADATA_HOSTS.contains(&name.as_str()) {
                return Egress::Forbidden(format!("{name} is a cloud metadata service"));
            }
            let by_form = if name == "localhost" || name.ends_with(".localhost") {
                Some(Egress::Private(format!("{name} is the local host")))
            } else if !name.contains('.')
                || name.ends_with(".svc")
                || name.contains(".svc.")
                || name.ends_with(".local")
            {
                Some(Egress::Private(format!("{name} is a cluster-internal name")))
            } else {
                None
            };
            if by_form.is_some() && rules.deny.is_empty() {
                return by_form.unwrap_or(Egress::Public);
            }
            let lookup = tokio::time::timeout(
                Duration::from_secs(2),
                tokio::net::lookup_host((name.as_str(), port)),
            );
            match lookup.await {
                Ok(Ok(addresses)) => {
                    let mut verdict = Egress::Public;
                    for address in addresses {
                        match classify_ip(address.ip(), rules) {
                            forbidden @ Egress::Forbidden(_) => return forbidden,
                            private @ Egress::Private(_) => verdict = private,
                            Egress::Public => {}
                        }
                    }
                    verdict
                }
                _ => by_form.unwrap_or(Egress::Public),
            }
        }
        None => Egress::Forbidden(format!("{url} has no host")),
    }
}

/// Addresses a connection may be made to: never forbidden ones, private ones only when allowed.
pub fn permitted(
    addresses: impl IntoIterator<Item = SocketAddr>,
    allow_private_networks: bool,
    rules: &EgressRules,
) -> Vec<SocketAddr> {
    addresses
        .into_iter()
        .filter(|a| match classify_ip(a.ip(), rules) {
            Egress::Public => true,
            Egress::Private(_) => allow_private_networks,
            Egress::Forbidden(_) => false,
        })
        .collect()
}

/// The resolver of the delivery clients: it resolves host names when connecting and returns
/// only the addresses the egress policy permits, so the address checked is the address used (a
/// name that resolved to a public address when checked cannot rebind to a metadata address
/// when connecting), and a failed lookup fails the connection.
pub struct EgressResolver {
    pub allow_private_networks: bool,
    pub rules: Arc<EgressRules>,
}

impl reqwest::dns::Resolve for EgressResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_private_networks = self.allow_private_networks;
        let rules = self.rules.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed = permitted(found, allow_private_networks, &rules);
            if allowed.is_empty() {
                return Err(format!("{host} resolves to no address the egress policy permits").into());
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Why a URL may not be delivered to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EgressRefusal {
    /// Never allowed (link-local, metadata, not unicast, not a URL).
    Forbidden(String),
    /// A private, loopback or cluster address, and the target did not opt in.
    PrivateNotAllowed(String),
}

impl EgressRefusal {
    /// The condition reason in status.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Forbidden(_) => "UrlNotAllowed",
            Self::PrivateNotAllowed(_) => "PrivateNetworkNotAllowed",
        }
    }

    /// What the URL points at, e.g. "10.1.2.3 is a private address".
    pub fn why(&self) -> &str {
        match self {
            Self::Forbidden(why) | Self::PrivateNotAllowed(why) => why,
        }
    }
}

impl std::fmt::Display for EgressRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Forbidden(why) => write!(f, "URL not allowed: {why}"),
            Self::PrivateNotAllowed(why) => {
                write!(f, "URL not allowed: {why} (allowPrivateNetworks is false)")
            }
        }
    }
}

/// Whether a target may be sent to at `url`; `allow_private_networks` is true for handlers and
/// for subscriptions that opted in.
pub async fn refusal(url: &str, allow_private_networks: bool, rules: &EgressRules) -> Option<EgressRefusal> {
    match classify(url, rules).await {
        Egress::Forbidden(why) => Some(EgressRefusal::Forbidden(why)),
        Egress::Private(why) if !allow_private_networks => Some(EgressRefusal::PrivateNotAllowed(why)),
        _ => None,
    }
}

/// Verdicts on URLs under one set of rules, kept for a while: classifying a host name costs a
/// DNS lookup, too much to repeat for every delivery or console page. Connections are checked
/// again in any case (see [`EgressResolver`]).
pub struct EgressCache {
    rules: Arc<EgressRules>,
    verdicts: Mutex<Verdicts>,
}

/// Per "private networks allowed" (false, true): URL → (when checked, refusal if any). Keyed
/// by the URL alone so a lookup, done for every delivery, allocates nothing.
type Verdicts = [HashMap<String, (Instant, Option<EgressRefusal>)>; 2];

/// How long a verdict is kept.
const RECHECK: Duration = Duration::from_secs(30);
/// Verdicts kept at most; past it, stale ones are dropped.
const VERDICTS_KEPT: usize = 10_000;

impl EgressCache {
    pub fn new(rules: Arc<EgressRules>) -> Self {
        Self {
            rules,
            verdicts: Mutex::default(),
        }
    }

    /// [`refusal`] under these rules, from the cache when it is fresh.
    pub async fn refusal(&self, url: &str, allow_private_networks: bool) -> Option<EgressRefusal> {
        let side = usize::from(allow_private_networks);
        if let Some((checked, verdict)) = self.lock()[side].get(url)
            && checked.elapsed() < RECHECK
        {
            return verdict.clone();
        }
        let verdict = refusal(url, allow_private_networks, &self.rules).await;
        let verdicts = &mut self.lock()[side];
        if verdicts.len() >= VERDICTS_KEPT {
            verdicts.retain(|_, (checked, _)| checked.elapsed() < RECHECK);
        }
        verdicts.insert(url.to_owned(), (Instant::now(), verdict.clone()));
        verdict
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Verdicts> {
        self.verdicts.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none() -> EgressRules {
        EgressRules::default()
    }

    fn rules(deny: &[&str], allow: &[&str]) -> EgressRules {
        let nets = |list: &[&str]| list.iter().map(|n| n.parse().unwrap()).collect();
        EgressRules {
            deny: nets(deny),
            allow: nets(allow),
        }
    }

    /// The operator's ranges beat the tenant's opt-in: a denied range is refused even with
    /// allowPrivateNetworks (and to handlers, which always have it), also as IPv4-mapped and
    /// NAT64 forms; an allowed private range needs no opt-in; metadata stays forbidden.
    #[tokio::test]
    async fn operator_ranges_come_before_the_opt_in() {
        let operator = rules(
            &["10.0.0.0/8", "203.0.113.0/24"],
            &["192.168.5.0/24", "169.254.0.0/16"],
        );
        for url in [
            "http://10.1.2.3/",
            "http://[::ffff:10.1.2.3]/",
            "http://[64:ff9b::a01:203]/",
            "https://203.0.113.10/",
        ] {
            let refused = refusal(url, true, &operator).await.expect(url);
            assert_eq!(refused.reason(), "UrlNotAllowed", "{url}");
            assert!(refused.why().contains("which the operator denies"), "{refused}");
        }
        assert_eq!(refusal("http://192.168.5.9/", false, &operator).await, None);
        assert!(refusal("http://192.168.6.9/", false, &operator).await.is_some());
        assert!(
            refusal("http://169.254.169.254/", true, &operator)
                .await
                .is_some()
        );
        // A name is looked up when ranges are denied, and checked again when connecting.
        let loopback = rules(&["127.0.0.0/8", "::1/128"], &[]);
        assert!(refusal("http://localhost:8080/", true, &loopback).await.is_some());
        assert!(permitted(["127.0.0.1:80".parse().unwrap()], true, &loopback).is_empty());
        assert_eq!(
            permitted(["192.168.5.1:80".parse().unwrap()], false, &operator).len(),
            1
        );
    }

    #[tokio::test]
    async fn classifies_addresses_and_names() {
        for url in [
            "http://169.254.169.254/latest/meta-data",
            "http://metadata.google.internal/",
            "http://[fe80::1]/",
        ] {
            assert!(
                matches!(classify(url, &none()).await, Egress::Forbidden(_)),
                "{url}"
            );
        }
        for url in [
            "http://10.1.2.3/",
            "http://192.168.0.1:8080/",
            "http://127.0.0.1:9000/hook",
            "http://billing-api:8080/webhooks",
            "http://billing-api.billing.svc.cluster.local/",
            "http://localhost/",
            "http://[::1]/",
            "http://[fd12::1]/",
        ] {
            assert!(
                matches!(classify(url, &none()).await, Egress::Private(_)),
                "{url}"
            );
        }
        assert_eq!(
            classify("https://203.0.113.10/hooks", &none()).await,
            Egress::Public
        );
    }

    #[test]
    fn connections_go_only_to_permitted_addresses() {
        let resolved: Vec<SocketAddr> = [
            "203.0.113.10:443",
            "169.254.169.254:443",
            "10.0.0.7:443",
            "[::1]:443",
        ]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
        assert_eq!(
            permitted(resolved.clone(), false, &none()),
            ["203.0.113.10:443".parse::<SocketAddr>().unwrap()],
            "a public address first and a metadata one second: only the public one is used"
        );
        assert_eq!(
            permitted(resolved, true, &none()).len(),
            3,
            "private allowed, metadata never"
        );
        for forbidden in [
            "[64:ff9b::a9fe:a9fe]:80",
            "[::ffff:169.254.169.254]:80",
            "100.100.100.200:80",
            "[fd00:ec2::254]:80",
        ] {
            assert!(
                permitted([forbidden.parse().unwrap()], true, &none()).is_empty(),
                "{forbidden}"
            );
        }
        assert_eq!(
            permitted(["[64:ff9b::cb00:710a]:80".parse().unwrap()], false, &none()).len(),
            1,
            "NAT64 of a public address"
        );
    }

    /// The real resolver (the system's, /etc/hosts here) behind a real connection: a name that
    /// resolves to loopback is refused when connecting for a target without the opt-in.
    #[tokio::test]
    async fn a_name_is_checked_again_when_connecting() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
        tokio::spawn(async move { axum::serve(listener, app).await });
        let client = |allow_private_networks| {
            reqwest::Client::builder()
                .dns_resolver(std::sync::Arc::new(EgressResolver {
                    allow_private_networks,
                    rules: Arc::default(),
                }))
                .build()
                .unwrap()
        };
        let url = format!("http://localhost:{port}/");
        let refused = client(false)
            .get(&url)
            .send()
            .await
            .expect_err("refused when connecting");
        assert!(refused.is_connect(), "{refused:?}");
        assert_eq!(client(true).get(&url).send().await.unwrap().status(), 200);
    }

    #[tokio::test]
    async fn private_addresses_need_the_opt_in() {
        let refused = refusal("http://127.0.0.1:9000/", false, &none())
            .await
            .expect("refused");
        assert_eq!(refused.reason(), "PrivateNetworkNotAllowed");
        assert!(refused.to_string().ends_with("(allowPrivateNetworks is false)"));
        assert_eq!(refusal("http://127.0.0.1:9000/", true, &none()).await, None);
        let forbidden = refusal("http://169.254.169.254/", true, &none())
            .await
            .expect("refused");
        assert_eq!(forbidden.reason(), "UrlNotAllowed");
    }
}
