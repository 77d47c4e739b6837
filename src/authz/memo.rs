//! The decision memo: Cedar's answer for one distinct input, kept per [`Engine`](super::Engine)
//! so a snapshot swap drops it with the engine.
//!
//! **Exactness.** A key holds everything Cedar can see that varies between requests, for its
//! [`Scope`]: a whole slice of the index (one action and principal type), asked *before* the
//! guards run, or, when that slice reads `context.time` or `context.request_id`, the policy set
//! the guards then chose (`Selected::id`, unique within the engine), asked after them. Guards
//! read only the route (host, path, `service`), the action, a user's issuer, the peer's fields
//! (all in every key) and `query`, `scheme`, `request_id` (in [`Reads`], and a slice's reads
//! include every guard's): so a slice key fixes which set the guards would choose, and one
//! answer serves every set they could choose. The key holds:
//!
//! - the action, and which identities were proven (so `context.authn` and the principal type);
//! - every proven identity in full: a user's subject, issuer, scopes, audiences, groups and
//!   claims (its attributes, parents and tags), an API client's id and groups, the peer's SPIFFE
//!   id, trust domain, namespace and service account (the `Service` entity, `context.peer`);
//! - the route: host and path (the `Route` id and attributes, `context.host`/`context.path`,
//!   and `service`, derived from the host) and every tag (mapped headers, route facts);
//! - which optional context attributes are present (`Shape`);
//! - the values of the other context attributes that some policy of the scope reads
//!   ([`Reads`], from the policies' ASTs and guards): `query`, `scheme`, `time`, `source_ip`,
//!   gRPC.
//!
//! Everything else Cedar sees is fixed per engine (policies, schema, static entities). A set that
//! reads `context.request_id` (unique per request) or uses `context` other than through one
//! attribute is never memoized; nor is a request with a body, or one whose engine validates each
//! request against the schema. `context.time` is keyed on its value (whole seconds), so such a
//! set still answers from the memo within one second (such a slice is asked after its guards,
//! so sets that leave the time-reading policies out are keyed without it). Keys are a length-prefixed encoding of
//! those values (injective): a hit compares the whole stored key with the request's, never a
//! hash alone.
//!
//! Authentication runs on every request before the memo, and the key is the verified content
//! itself, not the token: a rotated key, a revoked or expired token is refused before this memo
//! is consulted, and never needs to be evicted from it.
use std::cell::RefCell;
use std::net::IpAddr;
use std::sync::Arc;

use cedar_policy::Policy;
use cedar_policy_core::ast::{Expr, ExprKind, Var};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::{counter::Counter, family::Family};
use prometheus_client::registry::Registry;

use super::model;
use super::{AuthzOutcome, CedarMapping};
use crate::authn::Identities;
use crate::request::{RequestView, RouteFactSource};

/// Keys longer than this are not memoized (an identity with very many claims, many headers):
/// entries stay small, so `max_entries` bounds memory.
pub(super) const MAX_KEY_BYTES: usize = 4096;

/// The context attributes a set of policies can read, beyond those every key holds anyway
/// (`method`, `path`, `host`, `authn`, `peer`, which the action, route and identities fix).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Reads(u8);

impl Reads {
    pub(super) const NONE: Reads = Reads(0);
    pub(super) const QUERY: Reads = Reads(1);
    pub(super) const SCHEME: Reads = Reads(1 << 1);
    pub(super) const TIME: Reads = Reads(1 << 2);
    pub(super) const SOURCE_IP: Reads = Reads(1 << 3);
    /// `grpc_service` or `grpc_method`.
    pub(super) const GRPC: Reads = Reads(1 << 4);
    pub(super) const BODY: Reads = Reads(1 << 5);
    pub(super) const REQUEST_ID: Reads = Reads(1 << 6);
    /// `context` used whole: compared, passed to a function, put in a set or record.
    pub(super) const ALL: Reads = Reads(u8::MAX);

    pub(super) fn union(self, other: Reads) -> Reads {
        Reads(self.0 | other.0)
    }

    pub(super) fn contains(self, r: Reads) -> bool {
        self.0 & r.0 == r.0
    }

    /// Whether a set reading this can be memoized (it reads nothing unique per request).
    pub(super) fn memoizable(self) -> bool {
        !self.contains(Reads::REQUEST_ID)
    }

    /// What one policy's condition (scope, `when`, negated `unless`) reads of the context.
    pub(super) fn of_policy(p: &Policy) -> Reads {
        let core: &cedar_policy_core::ast::Policy = p.as_ref();
        let mut r = Reads::NONE;
        r.walk(&core.condition());
        r
    }

    fn attribute(attr: &str) -> Reads {
        match attr {
            model::CTX_QUERY => Reads::QUERY,
            model::CTX_SCHEME => Reads::SCHEME,
            model::CTX_TIME => Reads::TIME,
            model::CTX_SOURCE_IP => Reads::SOURCE_IP,
            model::CTX_GRPC_SERVICE | model::CTX_GRPC_METHOD => Reads::GRPC,
            model::CTX_BODY => Reads::BODY,
            model::CTX_REQUEST_ID => Reads::REQUEST_ID,
            // Always in the key (`method`, `path`, `host`, `authn`, `peer`), or never in any
            // context: then only whether it is present could matter, and it never is.
            _ => Reads::NONE,
        }
    }

    fn walk(&mut self, e: &Expr) {
        let is_context = |x: &Expr| matches!(x.expr_kind(), ExprKind::Var(Var::Context));
        match e.expr_kind() {
            // `context.x`, `context["x"]`, `context has x`: one attribute.
            ExprKind::GetAttr { expr, attr } | ExprKind::HasAttr { expr, attr } if is_context(expr) => {
                *self = self.union(Reads::attribute(attr));
            }
            // `context has x.y`: reads `x` (whose whole value the key then holds).
            ExprKind::ExtHasAttr { expr, attrs } if is_context(expr) => {
                *self = self.union(Reads::attribute(&attrs.head));
            }
            ExprKind::Var(Var::Context) => *self = Reads::ALL,
            ExprKind::Lit(_) | ExprKind::Var(_) | ExprKind::Slot(_) | ExprKind::Unknown(_) => {}
            ExprKind::If { test_expr, then_expr, else_expr } => {
                self.walk(test_expr);
                self.walk(then_expr);
                self.walk(else_expr);
            }
            ExprKind::And { left, right } | ExprKind::Or { left, right } => {
                self.walk(left);
                self.walk(right);
            }
            ExprKind::UnaryApp { arg, .. } => self.walk(arg),
            ExprKind::BinaryApp { arg1, arg2, .. } => {
                self.walk(arg1);
                self.walk(arg2);
            }
            ExprKind::ExtensionFunctionApp { args, .. } | ExprKind::Set(args) => args.iter().for_each(|a| self.walk(a)),
            ExprKind::GetAttr { expr, .. }
            | ExprKind::HasAttr { expr, .. }
            | ExprKind::ExtHasAttr { expr, .. }
            | ExprKind::Like { expr, .. }
            | ExprKind::Is { expr, .. } => self.walk(expr),
            ExprKind::Record(fields) => fields.values().for_each(|v| self.walk(v)),
            // A kind this walk does not know (a newer Cedar): assume it reads everything.
            #[allow(unreachable_patterns)]
            _ => *self = Reads::ALL,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MemoLabels {
    result: &'static str,
}

/// `cedar.decision_memo` as authorization uses it: the size of each engine's memo, and the
/// counter of lookups by result (`hit`, `miss`, `bypass`: not memoizable).
#[derive(Debug, Clone, Default)]
pub struct DecisionMemoSettings {
    /// 0: no memo.
    pub max_entries: u64,
    lookups: Option<Family<MemoLabels, Counter>>,
}

impl DecisionMemoSettings {
    /// Registers `decision_memo_lookups` in `registry`.
    pub fn new(max_entries: u64, registry: &mut Registry) -> Self {
        let lookups = Family::<MemoLabels, Counter>::default();
        registry.register(
            "decision_memo_lookups",
            "Decision memo lookups by result (hit, miss, bypass: the request or its policies cannot be memoized)",
            lookups.clone(),
        );
        Self { max_entries, lookups: Some(lookups) }
    }

    /// Without metrics (tests, benchmarks).
    pub fn unmetered(max_entries: u64) -> Self {
        Self { max_entries, lookups: None }
    }

    pub(super) fn count(&self, result: &'static str) {
        if let Some(l) = &self.lookups {
            l.get_or_create(&MemoLabels { result }).inc();
        }
    }

    #[cfg(test)]
    pub(super) fn count_of(&self, result: &'static str) -> u64 {
        self.lookups.as_ref().map_or(0, |l| l.get_or_create(&MemoLabels { result }).get())
    }
}

/// Which policies a key's answer is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Scope {
    /// A set the index chose after running the guards (`Selected::id`).
    Set(u64),
    /// A whole slice (one action and principal type), looked up before its guards run: the
    /// key's `reads` then cover every policy and guard of the slice.
    Slice(u64),
}

/// The request values a key is built from (borrowed: a hit allocates nothing for its key).
pub(super) struct Probe<'a, 'r> {
    pub scope: Scope,
    pub reads: Reads,
    /// `Shape` bits: which optional context attributes are present.
    pub shape: u8,
    pub req: &'a RequestView<'r>,
    pub ids: &'a Identities,
    pub mapping: &'a CedarMapping,
    /// `context.time`, the value the context is built with on a miss (read only if keyed).
    pub time: &'a super::context::RequestTime,
    pub grpc: Option<(&'a str, &'a str)>,
}

/// Appends an injective encoding: every variable-length value is length-prefixed.
struct Writer<'b>(&'b mut Vec<u8>);

impl Writer<'_> {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn str(&mut self, s: &str) {
        self.u64(s.len() as u64);
        self.0.extend_from_slice(s.as_bytes());
    }
    fn strs<S: AsRef<str>>(&mut self, v: &[S]) {
        self.u64(v.len() as u64);
        v.iter().for_each(|s| self.str(s.as_ref()));
    }
}

impl Probe<'_, '_> {
    fn encode(&self, out: &mut Vec<u8>) {
        let mut w = Writer(out);
        let ids = self.ids;
        match self.scope {
            Scope::Set(id) => {
                w.u8(0);
                w.u64(id);
            }
            Scope::Slice(id) => {
                w.u8(1);
                w.u64(id);
            }
        }
        w.u8(self.shape);
        w.u8(u8::from(ids.jwt.is_some()) | u8::from(ids.api_client.is_some()) << 1 | u8::from(ids.peer.is_some()) << 2);
        w.str(&self.req.method);
        if let Some(j) = &ids.jwt {
            w.str(&j.subject);
            w.str(&j.issuer);
            w.strs(&j.scopes);
            w.strs(&j.audiences);
            w.strs(&j.groups);
            w.u64(j.claims.len() as u64);
            for (k, v) in &j.claims {
                w.str(k);
                w.str(v);
            }
        }
        if let Some(c) = &ids.api_client {
            w.str(&c.client);
            w.strs(&c.groups);
        }
        if let Some(p) = &ids.peer {
            w.str(&p.spiffe_id);
            w.str(&p.trust_domain);
            w.str(&p.namespace);
            w.str(&p.service_account);
        }
        let req = self.req;
        w.str(&req.host);
        w.str(&req.path);
        // The `Route` tags, as `entities::route` builds them.
        for h in &self.mapping.context_headers {
            match req.header_joined(h) {
                Some(v) => {
                    w.u8(1);
                    w.str(&v);
                }
                None => w.u8(0),
            }
        }
        w.u64(req.route_facts.len() as u64);
        for f in &req.route_facts {
            match f.source {
                RouteFactSource::Extension => w.u8(0),
                RouteFactSource::Metadata(ns) => {
                    w.u8(1);
                    w.str(ns);
                }
                RouteFactSource::RouteMetadata(ns) => {
                    w.u8(2);
                    w.str(ns);
                }
            }
            w.str(f.key);
            w.str(f.value);
        }
        let r = self.reads;
        if r.contains(Reads::QUERY) {
            w.str(req.query);
        }
        if r.contains(Reads::SCHEME) {
            w.str(req.scheme);
        }
        if r.contains(Reads::TIME) {
            w.0.extend_from_slice(&self.time.get().to_le_bytes());
        }
        if r.contains(Reads::SOURCE_IP) {
            match req.source_ip {
                Some(IpAddr::V4(a)) => {
                    w.u8(4);
                    w.0.extend_from_slice(&a.octets());
                }
                Some(IpAddr::V6(a)) => {
                    w.u8(6);
                    w.0.extend_from_slice(&a.octets());
                }
                None => w.u8(0),
            }
        }
        if r.contains(Reads::GRPC) {
            match self.grpc {
                Some((service, method)) => {
                    w.u8(1);
                    w.str(service);
                    w.str(method);
                }
                None => w.u8(0),
            }
        }
    }
}

struct Entry {
    key: Box<[u8]>,
    /// Shared with every hit: a hit copies nothing.
    outcome: Arc<AuthzOutcome>,
}

/// A miss, to be stored once Cedar has answered.
pub(super) struct Pending {
    hash: u64,
    key: Box<[u8]>,
}

pub(super) enum Lookup {
    Hit(Arc<AuthzOutcome>),
    Miss(Pending),
    /// The request or its policy set is not memoizable.
    Bypass,
}

thread_local! {
    /// The key of the request being looked up, reused so a hit allocates nothing for it.
    static KEY: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// One engine's memo: entries by a keyed hash of the key, each holding its whole key.
pub(super) struct DecisionMemo {
    /// Keyed by a hash already: moka's own hashing of it need not be SipHash either.
    cache: moka::sync::Cache<u64, Arc<Entry>, ahash::RandomState>,
    /// Random per memo: hashes cannot be chosen from outside to collide (a collision would only
    /// cost misses, never a wrong answer: every hit compares the whole key). aHash, not
    /// SipHash: the key is a few hundred bytes hashed on every check.
    hasher: ahash::RandomState,
}

impl std::fmt::Debug for DecisionMemo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecisionMemo").field("entries", &self.cache.entry_count()).finish()
    }
}

impl DecisionMemo {
    /// `None` when `max_entries` is 0.
    pub(super) fn new(max_entries: u64) -> Option<DecisionMemo> {
        (max_entries > 0).then(|| DecisionMemo {
            cache: moka::sync::Cache::builder().max_capacity(max_entries).build_with_hasher(ahash::RandomState::new()),
            hasher: ahash::RandomState::new(),
        })
    }

    pub(super) fn lookup(&self, probe: &Probe<'_, '_>) -> Lookup {
        if !probe.reads.memoizable() {
            return Lookup::Bypass;
        }
        KEY.with(|cell| {
            let Ok(mut key) = cell.try_borrow_mut() else { return Lookup::Bypass };
            key.clear();
            probe.encode(&mut key);
            let found = if key.len() > MAX_KEY_BYTES {
                Lookup::Bypass
            } else {
                let hash = self.hasher.hash_one(key.as_slice());
                match self.cache.get(&hash) {
                    Some(e) if *e.key == **key => Lookup::Hit(Arc::clone(&e.outcome)),
                    _ => Lookup::Miss(Pending { hash, key: key.as_slice().into() }),
                }
            };
            if key.capacity() > 4 * MAX_KEY_BYTES {
                // One huge identity must not keep a huge buffer alive on this thread.
                *key = Vec::new();
            }
            found
        })
    }

    pub(super) fn insert(&self, p: Pending, outcome: &Arc<AuthzOutcome>) {
        self.cache.insert(p.hash, Arc::new(Entry { key: p.key, outcome: Arc::clone(outcome) }));
    }

    #[cfg(test)]
    pub(super) fn entries(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
    }
}

#[cfg(test)]
mod tests;
