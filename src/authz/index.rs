//! The policies that can matter for one request, found before Cedar runs.
//!
//! Cedar evaluates every policy of the set it is given, and clones each policy's condition to do
//! so: its cost grows with the whole policy set, even when nearly every policy is about another
//! route. The index is built once per snapshot and narrows the set in two exact steps:
//!
//! 1. **Scope.** A slice per (action, principal type) holds only the policies whose scope can
//!    match that action and principal type (`action ==`/`in`, `principal is`/`==`, `resource is`).
//! 2. **Guards.** Cedar evaluates a policy's condition (scope, then each `when`, then each
//!    `!unless`) left to right and stops at the first false conjunct. The leading conjuncts that
//!    compare a request attribute we always set with a string literal (`resource.path like
//!    "/api/*"`, `resource.host == "…"`, `context.method == "GET"`, `principal.namespace == "…"`
//!    for a `Service`, or the negation of one) can never raise an error, so when one of them is
//!    false Cedar would answer `false` for the policy, with no error: the policy is left out.
//!
//! The policies left out are exactly some of those Cedar would find unsatisfied without error, so
//! the decision, the determining policies and the errors do not change (tests compare against
//! evaluating every policy). Anything the index does not understand is kept for Cedar.
//!
//! The decision memo is asked between the two steps when it can be (`Slice::pre_guard`): then a
//! repeated request runs no guard at all.
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use arc_swap::ArcSwap;
use cedar_policy::{
    ActionConstraint, Entities, EntityTypeName, EntityUid, Policy, PolicySet, PrincipalConstraint, ResourceConstraint,
};
use serde_json::Value;

use super::guard::{Facts, Guard};
use super::memo::Reads;
use super::model::PrincipalKind;

/// The policies chosen for a request, and which context attributes they can read.
#[derive(Debug)]
pub(super) struct Selected {
    pub policies: Arc<PolicySet>,
    pub reads: Reads,
    /// Unique within the index for a set the index keeps; `None` for a set built for one request
    /// (or every policy, the fallback), which the decision memo then leaves alone.
    pub id: Option<u64>,
}

/// What varies in a request's Cedar context, and so in whether it fits the schema: optional
/// attributes present or not, and whether the `authn` set is empty (an empty set fits any set
/// type). Everything else in the context has one fixed type, except `body`, whose value is the
/// client's: a request with a body is validated on its own, so its shapes always "fit" here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct Shape {
    pub source_ip: bool,
    pub peer: bool,
    pub authn: bool,
    /// `grpc_service` and `grpc_method` are set.
    pub grpc: bool,
    /// `body` is set.
    pub body: bool,
}

/// How many [`Shape`]s there are.
const SHAPES: usize = 32;

impl Shape {
    const ALL: [Shape; SHAPES] = {
        let mut all = [Shape { source_ip: false, peer: false, authn: false, grpc: false, body: false }; SHAPES];
        let mut i = 0;
        while i < SHAPES {
            all[i] = Shape {
                source_ip: i & 1 != 0,
                peer: i & 2 != 0,
                authn: i & 4 != 0,
                grpc: i & 8 != 0,
                body: i & 16 != 0,
            };
            i += 1;
        }
        all
    };

    /// One bit per optional attribute.
    pub(super) fn bits(self) -> u8 {
        self.slot() as u8
    }

    fn slot(self) -> usize {
        usize::from(self.source_ip)
            | usize::from(self.peer) << 1
            | usize::from(self.authn) << 2
            | usize::from(self.grpc) << 3
            | usize::from(self.body) << 4
    }
}

/// Memoized policy sets are bounded in number per slice and in policies held per index, so no
/// sequence of requests can grow them without limit.
const MAX_SETS_PER_SLICE: usize = 256;
const MAX_MEMO_POLICIES: usize = 65_536;

/// The policies that can match one (action, principal type).
pub(super) struct Slice {
    /// Unique within the index: the decision memo's scope for a lookup before the guards.
    id: u64,
    /// What the slice's policies and guards can read of the context, all of them together:
    /// what a memo key taken before the guards must hold. `None` when such a key would read
    /// something unique per request or the clock: then the memo is asked after the guards, for
    /// the (smaller) chosen set.
    pre_guard: Option<Reads>,
    policies: Vec<Policy>,
    /// What each policy of `policies` can read of the context (computed once, at build).
    reads: Vec<Reads>,
    /// Indices into `policies` with no guard: always handed to Cedar.
    unguarded: Vec<u32>,
    guarded: Vec<(u32, Guard)>,
    /// Whether a request of each [`Shape`] fits the schema (checked once, at build).
    fits: [Result<(), String>; SHAPES],
    /// Policy sets by the guarded policies they hold.
    sets: ArcSwap<HashMap<Box<[u32]>, Arc<Selected>>>,
}

/// Whether a request of an action, principal kind and shape passes the schema's validation.
pub(super) type FitsSchema<'a> = dyn Fn(&EntityUid, PrincipalKind, Shape) -> Result<(), String> + 'a;

/// Built once per snapshot: the slices, and the static entities every request starts from.
pub(super) struct PolicyIndex {
    /// By action id (`Action::"<id>"`), one slot per [`PrincipalKind`].
    slices: HashMap<String, [Option<Slice>; 4]>,
    /// Static entities without those that cannot change an answer.
    entities: Arc<Entities>,
    whole: Arc<PolicySet>,
    /// `whole`, as the selection of last resort.
    whole_selected: Arc<Selected>,
    memo_policies: AtomicUsize,
    /// The next [`Selected::id`].
    next_set_id: AtomicU64,
    validate_each_request: bool,
    /// Some static entity has an ancestor of a type built per request.
    static_below_request_types: bool,
    #[cfg(test)]
    guard_runs: AtomicU64,
}

impl std::fmt::Debug for PolicyIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyIndex").field("actions", &self.slices.len()).finish()
    }
}

/// Why a request cannot be evaluated against a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Unfit {
    /// The schema declares no such action, or not for this principal type.
    Action,
    /// Cedar's request validation refused this shape of request; its message.
    Schema(String),
}

impl PolicyIndex {
    /// `actions` are the schema's `Action` entities; `principal_types` the type of each
    /// [`PrincipalKind`] (in `PrincipalKind::ALL` order). `fits` says whether a request of an
    /// action, principal kind and shape passes the schema's request validation; `None` when that
    /// cannot be known ahead and every request is validated instead.
    pub(super) fn build(
        policies: &PolicySet,
        entities: Entities,
        static_below_request_types: bool,
        action_entities: &Entities,
        actions: &[EntityUid],
        (principal_types, route): (&[EntityTypeName; 4], &EntityTypeName),
        fits: Option<&FitsSchema<'_>>,
    ) -> PolicyIndex {
        // The JSON form of a policy is re-parsed from its text on every call: once per policy.
        let all: Vec<(&Policy, Option<Value>)> = policies.policies().map(|p| (p, p.to_json().ok())).collect();
        let mut slices = HashMap::new();
        let mut slice_id = 0;
        for action in actions {
            let per_kind = PrincipalKind::ALL.map(|kind| {
                slice_id += 1;
                let fits = Shape::ALL.map(|shape| fits.map_or(Ok(()), |f| f(action, kind, shape)));
                if fits.iter().all(Result::is_err) {
                    // Never evaluated: keep only the reasons.
                    return Some(Slice::unfit(slice_id, fits));
                }
                let ty = &principal_types[kind.slot()];
                let in_scope = all.iter().filter(|(p, _)| scope_may_match(p, action, ty, route, action_entities));
                Some(Slice::new(slice_id, in_scope, kind, fits))
            });
            slices.insert(action.id().unescaped().to_owned(), per_kind);
        }
        let whole = Arc::new(policies.clone());
        PolicyIndex {
            slices,
            entities: Arc::new(entities),
            whole_selected: Arc::new(Selected { policies: whole.clone(), reads: Reads::ALL, id: None }),
            whole,
            memo_policies: AtomicUsize::new(0),
            next_set_id: AtomicU64::new(0),
            validate_each_request: fits.is_none(),
            static_below_request_types,
            #[cfg(test)]
            guard_runs: AtomicU64::new(0),
        }
    }

    /// True when a static entity could be a member of a per-request entity, so adding the
    /// request's entities can change the static entities' ancestors.
    pub(super) fn static_entities_reach_request_types(&self) -> bool {
        self.static_below_request_types
    }

    /// True when requests must be validated against the schema one by one.
    pub(super) fn validates_each_request(&self) -> bool {
        self.validate_each_request
    }

    /// The static entities a request's own entities are added to.
    pub(super) fn entities(&self) -> &Arc<Entities> {
        &self.entities
    }

    /// The policies to evaluate a request with. Errors when the request does not fit the schema.
    #[cfg(test)]
    pub(super) fn select(
        &self,
        action: &str,
        kind: PrincipalKind,
        shape: Shape,
        facts: &Facts<'_>,
    ) -> Result<Arc<Selected>, Unfit> {
        Ok(self.select_in(self.slice(action, kind, shape)?, facts))
    }

    /// The slice for an action and principal type, without running any guard. Errors when the
    /// request does not fit the schema.
    pub(super) fn slice(&self, action: &str, kind: PrincipalKind, shape: Shape) -> Result<&Slice, Unfit> {
        let slice = self.slices.get(action).and_then(|s| s[kind.slot()].as_ref()).ok_or(Unfit::Action)?;
        match &slice.fits[shape.slot()] {
            Ok(()) => Ok(slice),
            Err(m) => Err(Unfit::Schema(m.clone())),
        }
    }

    /// The policies of `slice` whose guards may hold for `facts`.
    pub(super) fn select_in(&self, slice: &Slice, facts: &Facts<'_>) -> Arc<Selected> {
        #[cfg(test)]
        self.guard_runs.fetch_add(1, Ordering::Relaxed);
        let selected = slice.select(facts, &self.memo_policies, &self.next_set_id);
        selected.unwrap_or_else(|| self.whole_selected.clone())
    }

    /// How many times guards were run ([`PolicyIndex::select_in`]).
    #[cfg(test)]
    pub(super) fn guard_runs(&self) -> u64 {
        self.guard_runs.load(Ordering::Relaxed)
    }

    /// Every policy, as an alternative to [`PolicyIndex::select`] (tests compare the two).
    pub(super) fn whole(&self) -> Arc<PolicySet> {
        self.whole.clone()
    }
}

impl Slice {
    fn unfit(id: u64, fits: [Result<(), String>; SHAPES]) -> Slice {
        Slice {
            id,
            pre_guard: None,
            policies: Vec::new(),
            reads: Vec::new(),
            unguarded: Vec::new(),
            guarded: Vec::new(),
            fits,
            sets: ArcSwap::from_pointee(HashMap::new()),
        }
    }

    fn new<'p>(
        id: u64,
        in_scope: impl Iterator<Item = &'p (&'p Policy, Option<Value>)>,
        kind: PrincipalKind,
        fits: [Result<(), String>; SHAPES],
    ) -> Slice {
        let mut policies = Vec::new();
        let mut unguarded = Vec::new();
        let mut guarded = Vec::new();
        for (i, (p, json)) in in_scope.enumerate() {
            let i = i as u32;
            match json.as_ref().and_then(|j| Guard::of(j, kind)) {
                Some(g) => guarded.push((i, g)),
                None => unguarded.push(i),
            }
            policies.push((*p).clone());
        }
        let reads: Vec<Reads> = policies.iter().map(Reads::of_policy).collect();
        // Everything any policy of the slice, or any guard, can read: a key holding it (with
        // what every key holds) decides the guards as well as Cedar. The guards' reads are
        // already in their policies' (a guard is a conjunct of its policy's condition); they are
        // added again so that this does not rest on the two walks agreeing.
        let guards = guarded.iter().map(|(_, g)| g.reads());
        let all = reads.iter().copied().chain(guards).fold(Reads::NONE, Reads::union);
        let pre_guard = (all.memoizable() && !all.contains(Reads::TIME)).then_some(all);
        Slice { id, pre_guard, policies, reads, unguarded, guarded, fits, sets: ArcSwap::from_pointee(HashMap::new()) }
    }

    /// The memo scope for a lookup before the guards: this slice's id and what its key must
    /// read. `None`: look up after the guards instead.
    pub(super) fn pre_guard(&self) -> Option<(u64, Reads)> {
        self.pre_guard.map(|r| (self.id, r))
    }

    /// `None` only if a set could not be built (ids are unique, so never): use every policy.
    fn select(&self, facts: &Facts<'_>, budget: &AtomicUsize, next_id: &AtomicU64) -> Option<Arc<Selected>> {
        let key: Vec<u32> = self.guarded.iter().filter(|(_, g)| g.may_hold(facts)).map(|(i, _)| *i).collect();
        if let Some(set) = self.sets.load().get(key.as_slice()) {
            return Some(set.clone());
        }
        let members = || self.unguarded.iter().chain(&key).map(|i| *i as usize);
        let chosen = members().filter_map(|i| self.policies.get(i)).cloned();
        let policies = Arc::new(PolicySet::from_policies(chosen).ok()?);
        let reads = members().filter_map(|i| self.reads.get(i)).fold(Reads::NONE, |a, r| a.union(*r));
        let size = self.unguarded.len() + key.len();
        let current = self.sets.load();
        let keep =
            current.len() < MAX_SETS_PER_SLICE && budget.fetch_add(size, Ordering::Relaxed) + size <= MAX_MEMO_POLICIES;
        let id = keep.then(|| next_id.fetch_add(1, Ordering::Relaxed));
        let set = Arc::new(Selected { policies, reads, id });
        if keep {
            // Copy-on-write: readers never wait; a racing insert may be lost and is redone.
            let mut next = HashMap::clone(&current);
            next.insert(key.into_boxed_slice(), set.clone());
            self.sets.store(Arc::new(next));
        }
        Some(set)
    }
}

/// False only when the policy's scope is certainly false for this action and principal type.
fn scope_may_match(
    p: &Policy,
    action: &EntityUid,
    principal: &EntityTypeName,
    route: &EntityTypeName,
    action_entities: &Entities,
) -> bool {
    let principal_ok = match p.principal_constraint() {
        // `principal in X` depends on the principal's groups, known only per request.
        PrincipalConstraint::Any | PrincipalConstraint::In(_) => true,
        PrincipalConstraint::Eq(u) => u.type_name() == principal,
        PrincipalConstraint::Is(t) | PrincipalConstraint::IsIn(t, _) => &t == principal,
    };
    let action_ok = match p.action_constraint() {
        ActionConstraint::Any => true,
        ActionConstraint::Eq(a) => &a == action,
        ActionConstraint::In(list) => list.iter().any(|a| a == action || action_entities.is_ancestor_of(a, action)),
    };
    // The resource is always a `Route`.
    let resource_ok = match p.resource_constraint() {
        ResourceConstraint::Any | ResourceConstraint::In(_) => true,
        ResourceConstraint::Eq(u) => u.type_name() == route,
        ResourceConstraint::Is(t) | ResourceConstraint::IsIn(t, _) => &t == route,
    };
    principal_ok && action_ok && resource_ok
}
