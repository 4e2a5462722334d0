//! Certificate selection by SNI: the `CertMap` of one listener and its rustls resolver.
//!
//! Order (DESIGN.md): the exact name, then a wildcard covering exactly one leftmost
//! label, then the listener's default, the global default, the factory default. Names
//! are stored lowercase; a lookup borrows the SNI and allocates nothing. Everything is
//! validated when the map is built, never when it is read.
//!
//! **Invariant:** this module never touches the store or the config files; it sees only
//! what `snapshot` hands it (tests/layering.rs keeps it below `snapshot`).

pub mod alpn;
pub mod ondemand;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::SniPolicy;
use crate::metrics::SniCounters;

/// A certificate ready to serve.
pub struct Served {
    pub id: Arc<str>,
    pub friendly_name: Arc<str>,
    pub key: Arc<CertifiedKey>,
}

impl fmt::Debug for Served {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Served").field("id", &self.id).finish_non_exhaustive()
    }
}

/// Why the fallback certificate was chosen (DESIGN.md, "Serving rule").
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DefaultKind {
    /// `cert set-default ID --listener NAME`.
    Listener,
    /// `cert set-default ID`, when it is a candidate of the listener.
    Global,
    /// The earliest-assigned certificate of a listener with assignments.
    Assigned,
    Factory,
}

impl DefaultKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Listener => "listener default",
            Self::Global => "global default",
            Self::Assigned => "earliest-assigned certificate",
            Self::Factory => "factory default",
        }
    }
}

/// How a certificate ranks against other candidates for the same name: valid now, then a
/// complete chain, then the latest notAfter, then the newest entry. The derived order
/// compares the fields in that order, so the greatest rank wins.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rank {
    pub valid_now: bool,
    pub chain_complete: bool,
    /// Unix seconds.
    pub not_after: i64,
    /// When the store entry was created, Unix seconds.
    pub created: i64,
}

impl Rank {
    /// Why `self` beats `other`, in words, or `None` if it does not.
    pub fn beats(&self, other: &Self) -> Option<&'static str> {
        if self <= other {
            return None;
        }
        Some(if self.valid_now != other.valid_now {
            "valid now"
        } else if self.chain_complete != other.chain_complete {
            "complete chain"
        } else if self.not_after != other.not_after {
            "expires later"
        } else {
            "newer entry"
        })
    }
}

/// Why SNI did not pick a certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Miss {
    /// The client sent no SNI.
    NoSni,
    /// The client sent a name no certificate of this listener covers.
    Unknown,
}

impl Miss {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoSni => "no_sni",
            Self::Unknown => "unknown_sni",
        }
    }
}

/// The answer of a lookup, shared by the handshake, metrics and `cert which`.
#[derive(Debug)]
pub enum Selection<'a> {
    Exact(&'a Served),
    Wildcard(&'a Served),
    Default {
        served: &'a Served,
        kind: DefaultKind,
        miss: Miss,
    },
    /// The listener's policy rejects this case: the handshake fails.
    Rejected(Miss),
}

impl Selection<'_> {
    pub fn served(&self) -> Option<&Served> {
        match self {
            Self::Exact(s) | Self::Wildcard(s) | Self::Default { served: s, .. } => Some(s),
            Self::Rejected(_) => None,
        }
    }

    /// One line for `cert which` and logs.
    pub fn reason(&self) -> String {
        let miss = |m: &Miss| match m {
            Miss::NoSni => "no SNI",
            Miss::Unknown => "no candidate certificate of this listener covers the name",
        };
        match self {
            Self::Exact(_) => "exact name match".into(),
            Self::Wildcard(_) => "wildcard match".into(),
            Self::Default { kind, miss: m, .. } => format!("{} ({})", kind.as_str(), miss(m)),
            Self::Rejected(m) => format!("rejected by the listener's {} policy ({})", m.as_str(), miss(m)),
        }
    }
}

/// The name tables' hasher: foldhash, seeded per process. SipHash (std's) was a tenth
/// of a reload at 100,000 certificates and most of a lookup; the keys are the
/// operator's certificate names, and a client's SNI only probes.
type Names<V> = HashMap<Box<str>, V, foldhash::fast::RandomState>;

/// One listener's certificates by name.
#[derive(Debug)]
pub struct CertMap {
    entries: Vec<Served>,
    ranks: Vec<Rank>,
    exact: Names<usize>,
    /// Keyed by the parent domain: `*.example.com` is stored under `example.com`.
    wildcard: Names<usize>,
    default: usize,
    default_kind: DefaultKind,
    no_sni: SniPolicy,
    unknown_sni: SniPolicy,
}

/// Builds a [`CertMap`]: add the candidates, then choose the fallback.
pub struct CertMapBuilder {
    map: CertMap,
    /// Index of each added id (the control plane asks for thousands).
    positions: HashMap<Arc<str>, usize, foldhash::fast::RandomState>,
}

impl CertMapBuilder {
    pub fn new(no_sni: SniPolicy, unknown_sni: SniPolicy) -> Self {
        Self::with_capacity(no_sni, unknown_sni, 0)
    }

    /// For `n` certificates.
    pub fn with_capacity(no_sni: SniPolicy, unknown_sni: SniPolicy, n: usize) -> Self {
        Self {
            map: CertMap {
                entries: Vec::with_capacity(n),
                ranks: Vec::with_capacity(n),
                exact: Names::with_capacity_and_hasher(n, Default::default()),
                wildcard: Names::with_capacity_and_hasher(n, Default::default()),
                default: 0,
                default_kind: DefaultKind::Factory,
                no_sni,
                unknown_sni,
            },
            positions: HashMap::with_capacity_and_hasher(n, Default::default()),
        }
    }

    /// Adds a candidate for its DNS `names`. When two candidates claim a name, the higher
    /// [`Rank`] wins; on a tie the one added first keeps it.
    pub fn add(&mut self, served: Served, names: &[String], rank: Rank) -> usize {
        let index = self.map.entries.len();
        self.positions.entry(Arc::clone(&served.id)).or_insert(index);
        self.map.entries.push(served);
        self.map.ranks.push(rank);
        for name in names {
            let (table, key) = match name.strip_prefix("*.") {
                Some(parent) => (&mut self.map.wildcard, parent),
                None => (&mut self.map.exact, name.as_str()),
            };
            // Names come lowercase from the store; lower them anyway, without a copy
            // when they already are.
            let key: std::borrow::Cow<'_, str> =
                if key.bytes().any(|b| b.is_ascii_uppercase()) { key.to_ascii_lowercase().into() } else { key.into() };
            match table.get(key.as_ref()) {
                Some(&other) if self.map.ranks[other] >= rank => {}
                _ => {
                    table.insert(key.into_owned().into_boxed_str(), index);
                }
            }
        }
        index
    }

    /// Finishes with `served` as the fallback certificate; it serves no name unless it
    /// was added as a candidate too.
    pub fn build(mut self, served: Served, kind: DefaultKind) -> CertMap {
        let index = self.position(&served.id).unwrap_or_else(|| {
            self.map.entries.push(served);
            self.map.ranks.push(Rank::default());
            self.map.entries.len() - 1
        });
        self.map.default = index;
        self.map.default_kind = kind;
        self.map
    }

    /// Finishes with an already added entry as the fallback.
    pub fn build_with(mut self, index: usize, kind: DefaultKind) -> CertMap {
        self.map.default = index;
        self.map.default_kind = kind;
        self.map
    }

    /// The index of an added candidate.
    pub fn position(&self, id: &str) -> Option<usize> {
        self.positions.get(id).copied()
    }
}

/// Longest DNS name; longer SNI cannot match anything.
pub const MAX_NAME: usize = 253;

/// A host name as the maps store it: lowercase, without a trailing dot ("Example.COM."
/// is "example.com"), lowered into `buf` only when it has upper-case letters, so that
/// nothing is allocated. `None` for a name that no map can hold (empty, too long).
pub fn normalise<'a>(name: &'a str, buf: &'a mut [u8; MAX_NAME]) -> Option<&'a str> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.len() > MAX_NAME {
        return None;
    }
    if !name.bytes().any(|b| b.is_ascii_uppercase()) {
        return Some(name);
    }
    let lowered = &mut buf[..name.len()];
    lowered.copy_from_slice(name.as_bytes());
    lowered.make_ascii_lowercase();
    std::str::from_utf8(lowered).ok()
}

/// The key a one-label wildcard covering `host` is stored under: `a.example.com` →
/// `example.com` (for `*.example.com`).
pub fn wildcard_parent(host: &str) -> Option<&str> {
    host.split_once('.').filter(|(label, _)| !label.is_empty()).map(|(_, parent)| parent)
}

impl CertMap {
    /// Selects the certificate for `sni`. Allocation-free: a name with upper-case
    /// letters is lowered into a stack buffer.
    pub fn lookup(&self, sni: Option<&str>) -> Selection<'_> {
        let Some(name) = sni.filter(|n| !n.is_empty()) else { return self.fallback(Miss::NoSni) };
        let mut buf = [0u8; MAX_NAME];
        let Some(name) = normalise(name, &mut buf) else { return self.fallback(Miss::Unknown) };
        if let Some(&i) = self.exact.get(name) {
            return Selection::Exact(&self.entries[i]);
        }
        if let Some(&i) = wildcard_parent(name).and_then(|p| self.wildcard.get(p)) {
            return Selection::Wildcard(&self.entries[i]);
        }
        self.fallback(Miss::Unknown)
    }

    /// [`Self::lookup`] for a certificate name rather than a client's SNI: a wildcard
    /// name (`*.example.com`) is asked for as one of the hosts it stands for. Control
    /// plane only (it allocates for a wildcard).
    pub fn lookup_name(&self, name: &str) -> Selection<'_> {
        match name.strip_prefix("*.") {
            Some(parent) => self.lookup(Some(&format!("portcullis-probe.{parent}"))),
            None => self.lookup(Some(name)),
        }
    }

    fn fallback(&self, miss: Miss) -> Selection<'_> {
        let policy = match miss {
            Miss::NoSni => self.no_sni,
            Miss::Unknown => self.unknown_sni,
        };
        match policy {
            SniPolicy::Reject => Selection::Rejected(miss),
            SniPolicy::Default => {
                Selection::Default { served: &self.entries[self.default], kind: self.default_kind, miss }
            }
        }
    }

    /// Every certificate this listener may serve.
    pub fn entries(&self) -> &[Served] {
        &self.entries
    }

    /// The rank of each entry, by index of [`Self::entries`].
    pub fn ranks(&self) -> &[Rank] {
        &self.ranks
    }

    /// The certificate served when SNI picks none (if the policy allows), and why.
    pub fn fallback_served(&self) -> (&Served, DefaultKind) {
        (&self.entries[self.default], self.default_kind)
    }
}

impl Served {
    /// The same certificate under another id (benchmarks with many entries).
    #[doc(hidden)]
    pub fn alias(&self, id: &str) -> Self {
        Self { id: id.into(), friendly_name: id.into(), key: Arc::clone(&self.key) }
    }
}

/// The rustls hook: one map, no lock.
pub struct Resolver {
    pub map: Arc<CertMap>,
    pub counters: SniCounters,
    /// The listener orders certificates on demand: an unknown name may have one issued
    /// since this map was built.
    pub on_demand: bool,
}

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resolver").finish_non_exhaustive()
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // A TLS-ALPN-01 validation offers acme-tls/1 alone; it gets the challenge
        // certificate or nothing, and no other hello ever gets one.
        if let Some(mut protocols) = hello.alpn()
            && let (Some(p), None) = (protocols.next(), protocols.next())
            && p == alpn::ACME_TLS_1
        {
            return alpn::answer(hello.server_name()?);
        }
        let selection = self.map.lookup(hello.server_name());
        let c = &self.counters;
        if self.on_demand
            && let Selection::Default { miss: Miss::Unknown, .. } | Selection::Rejected(Miss::Unknown) = selection
            && let Some(name) = hello.server_name()
            && let Some(name) = normalise(name, &mut [0u8; MAX_NAME])
            && let Some(key) = ondemand::issued(name)
        {
            c.matched.increment(1);
            return Some(key);
        }
        match &selection {
            Selection::Exact(_) | Selection::Wildcard(_) => c.matched.increment(1),
            Selection::Default { miss: Miss::NoSni, .. } => c.no_sni_default.increment(1),
            Selection::Default { miss: Miss::Unknown, .. } => c.unknown_default.increment(1),
            Selection::Rejected(Miss::NoSni) => c.no_sni_rejected.increment(1),
            Selection::Rejected(Miss::Unknown) => c.unknown_rejected.increment(1),
        }
        selection.served().map(|s| Arc::clone(&s.key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served(id: &str) -> Served {
        crate::testing::served(id)
    }

    fn rank(valid_now: bool, chain_complete: bool, not_after: i64, created: i64) -> Rank {
        Rank { valid_now, chain_complete, not_after, created }
    }

    fn map(no_sni: SniPolicy, unknown: SniPolicy) -> CertMap {
        let mut b = CertMapBuilder::new(no_sni, unknown);
        b.add(served("exact"), &["www.example.com".into(), "EXAMPLE.com".into()], rank(true, true, 100, 1));
        b.add(served("wild"), &["*.example.com".into()], rank(true, true, 100, 1));
        b.add(served("newer"), &["api.example.com".into()], rank(true, true, 200, 1));
        b.add(served("older"), &["api.example.com".into()], rank(true, true, 50, 1));
        // Expired beats nothing that is valid, however late its notAfter.
        b.add(served("expired"), &["old.example.com".into()], rank(false, true, 900, 9));
        b.add(served("valid"), &["old.example.com".into()], rank(true, false, 100, 1));
        // A complete chain beats a later notAfter.
        b.add(served("later-incomplete"), &["chain.example.com".into()], rank(true, false, 900, 1));
        b.add(served("complete"), &["chain.example.com".into()], rank(true, true, 100, 1));
        // Same validity and expiry: the newer entry.
        b.add(served("first"), &["twin.example.com".into()], rank(true, true, 100, 1));
        b.add(served("second"), &["twin.example.com".into()], rank(true, true, 100, 2));
        b.build(served("fallback"), DefaultKind::Global)
    }

    fn check(map: &CertMap, sni: Option<&str>, want: &str, kind: &str) {
        let sel = map.lookup(sni);
        let got = sel.served().map_or("-", |s| &s.id);
        let got_kind = match sel {
            Selection::Exact(_) => "exact",
            Selection::Wildcard(_) => "wildcard",
            Selection::Default { .. } => "default",
            Selection::Rejected(_) => "rejected",
        };
        assert_eq!((got, got_kind), (want, kind), "{sni:?}");
    }

    #[test]
    fn selection_rules() {
        let m = map(SniPolicy::Default, SniPolicy::Default);
        check(&m, Some("www.example.com"), "exact", "exact");
        check(&m, Some("WWW.Example.COM"), "exact", "exact");
        check(&m, Some("example.com"), "exact", "exact");
        check(&m, Some("foo.example.com"), "wild", "wildcard");
        check(&m, Some("a.b.example.com"), "fallback", "default");
        check(&m, Some("api.example.com"), "newer", "exact");
        check(&m, Some("old.example.com"), "valid", "exact");
        check(&m, Some("chain.example.com"), "complete", "exact");
        check(&m, Some("twin.example.com"), "second", "exact");
        check(&m, Some("www.example.com."), "exact", "exact");
        check(&m, Some("Foo.Example.Com."), "wild", "wildcard");
        check(&m, Some("."), "fallback", "default");
        check(&m, Some("other.test"), "fallback", "default");
        check(&m, None, "fallback", "default");
        check(&m, Some(""), "fallback", "default");
        check(&m, Some(&"a".repeat(300)), "fallback", "default");
        let strict = map(SniPolicy::Reject, SniPolicy::Reject);
        check(&strict, None, "-", "rejected");
        check(&strict, Some("other.test"), "-", "rejected");
        check(&strict, Some("foo.example.com"), "wild", "wildcard");
    }

    #[test]
    fn rank_reasons() {
        let base = rank(true, true, 100, 1);
        assert_eq!(base.beats(&rank(false, true, 900, 9)), Some("valid now"));
        assert_eq!(base.beats(&rank(true, false, 900, 9)), Some("complete chain"));
        assert_eq!(base.beats(&rank(true, true, 50, 9)), Some("expires later"));
        assert_eq!(base.beats(&rank(true, true, 100, 0)), Some("newer entry"));
        assert_eq!(base.beats(&base), None);
        assert_eq!(rank(false, true, 900, 9).beats(&base), None);
    }
}
