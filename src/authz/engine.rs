//! The [`Engine`]: everything authorization compiles once from a validated document set (policy
//! set, schema, static entities, the index, schema facts), and the evaluation of one request
//! against it.
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::ops::ControlFlow;
use std::sync::{Arc, OnceLock};

use cedar_policy::{Entities, EntityUid, PolicySet, Schema};
use cedar_policy_core::ast::Value;
use cedar_policy_core::ast::{Entity, EntityUID, EntityUIDEntry, PolicySet as CorePolicySet, Request as CoreRequest};
use cedar_policy_core::authorizer::{Authorizer as CoreAuthorizer, Decision as CoreDecision};
use cedar_policy_core::entities::json::ValueParser;
use cedar_policy_core::entities::json::err::JsonDeserializationErrorContext;
use cedar_policy_core::entities::{
    ContextSchema as _, Entities as CoreEntities, NoEntitiesSchema, SchemaType, TCComputation,
};
use cedar_policy_core::evaluator::RestrictedEvaluator;
use cedar_policy_core::extensions::Extensions;
use cedar_policy_core::validator::{ValidatorSchema, context_schema_for_action};

use super::context::{self as ctx, ContextParts, context};
use super::documents::{self, LoadError, PolicyDocument};
use super::entities::{self, base_entities, service_entity, uid};
use super::guard::Facts;
use super::index::{FitsSchema, PolicyIndex, Shape, Unfit};
use super::memo::{DecisionMemo, Lookup, Pending, Probe, Scope};
use super::model::{self, PrincipalKind, public, types};
use super::{AuthzError, AuthzOutcome, CedarMapping};
use crate::authn::Identities;
use crate::request::{BodyError, RequestView};

/// What the schema declares in an action's context beyond the fixed attributes.
#[derive(Debug, Clone, Default)]
struct Declared {
    /// `grpc_service` and `grpc_method`.
    grpc: bool,
    /// `body`: its type, and whether it is required.
    body: Option<(SchemaType, bool)>,
}

/// A compiled, immutable policy set: what every request of one snapshot evaluates against.
pub struct Engine {
    policies: PolicySet,
    schema: Schema,
    entities: Entities,
    policy_count: usize,
    /// What authorization precomputes once (which policies each request needs).
    pub(super) index: PolicyIndex,
    /// By action id, for actions whose context declares gRPC attributes or a body (none for
    /// the shipped schema's body: then a body is never looked at).
    declared: HashMap<String, Declared>,
    /// Decisions by distinct input, sized by the first [`authorize`] call's
    /// `cedar.decision_memo.max_entries` (one config per process); dropped with the engine.
    memo: OnceLock<Option<DecisionMemo>>,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine").field("policy_count", &self.policy_count).field("index", &self.index).finish()
    }
}

/// A compiled engine with what the documents said about their policies.
#[derive(Debug)]
pub struct Compiled {
    pub engine: Engine,
    /// Policy id → the document it came from.
    pub origins: HashMap<String, String>,
    /// Schema validation warnings (not fatal).
    pub warnings: Vec<String>,
}

impl Engine {
    /// Parses and strictly validates a whole document set, then compiles it. Every problem is
    /// reported, with file and position; nothing partial is ever returned.
    pub fn compile(docs: &[PolicyDocument], source: &str) -> Result<Compiled, Vec<LoadError>> {
        let v = documents::validate(docs, source)?;
        let engine = Self::new(v.policies, v.schema, v.entities, &v.enum_types, source)?;
        Ok(Compiled { engine, origins: v.origins, warnings: v.warnings })
    }

    /// No policies (and an empty schema): Cedar denies every request.
    pub fn empty(source: &str) -> Result<Engine, Vec<LoadError>> {
        let schema = Schema::from_schema_fragments(Vec::new())
            .map_err(|e| vec![LoadError::whole(source, format!("empty schema: {e}"))])?;
        Self::new(PolicySet::new(), schema, Entities::empty(), &HashSet::new(), source)
    }

    fn new(
        policies: PolicySet,
        schema: Schema,
        entities: Entities,
        enum_types: &HashSet<String>,
        source: &str,
    ) -> Result<Engine, Vec<LoadError>> {
        let declared = declared(&schema).map_err(|e| vec![LoadError::whole(source, format!("schema context: {e}"))])?;
        let index = index(&policies, &schema, &entities, enum_types, &declared)
            .map_err(|e| vec![LoadError::whole(source, format!("policy index: {e}"))])?;
        let policy_count = policies.policies().count();
        Ok(Engine { policy_count, policies, schema, entities, index, declared, memo: OnceLock::new() })
    }

    pub fn policies(&self) -> &PolicySet {
        &self.policies
    }

    /// The schema the policies were strictly validated against.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// Static entities, plus the schema's action entities.
    pub fn entities(&self) -> &Entities {
        &self.entities
    }

    pub fn policy_count(&self) -> usize {
        self.policy_count
    }

    /// The decision memo, if `mapping` wants one (and the first caller did).
    pub(super) fn memo(&self, mapping: &CedarMapping) -> Option<&DecisionMemo> {
        let max = mapping.decision_memo.max_entries;
        if max == 0 {
            return None;
        }
        self.memo.get_or_init(|| DecisionMemo::new(max)).as_ref()
    }
}

/// The optional context attributes each action's schema declares (gRPC, body), by action id.
fn declared(schema: &Schema) -> Result<HashMap<String, Declared>, AuthzError> {
    let t = types()?;
    let action_type = public(&t.action)?;
    let validator: &ValidatorSchema = schema.as_ref();
    let mut out = HashMap::new();
    for action in schema.actions().filter(|a| a.type_name() == &action_type) {
        let id = action.id().unescaped();
        let Some(ctx) = context_schema_for_action(validator, &uid(&t.action, id)) else { continue };
        let SchemaType::Record { attrs, .. } = ctx.context_type() else { continue };
        let d = Declared {
            grpc: attrs.contains_key(model::CTX_GRPC_SERVICE) && attrs.contains_key(model::CTX_GRPC_METHOD),
            body: attrs.get(model::CTX_BODY).map(|a| (a.schema_type().clone(), a.is_required())),
        };
        if d.grpc || d.body.is_some() {
            out.insert(id.to_owned(), d);
        }
    }
    Ok(out)
}

/// The body as the schema types it. The JSON conversion alone does not check the type fully:
/// the request holding it is validated against the schema as well.
fn body_value(json: serde_json::Value, ty: &SchemaType) -> Result<Value, BodyError> {
    let ext = Extensions::all_available();
    let expr = ValueParser::new(ext)
        .val_into_restricted_expr(json, Some(ty), &|| JsonDeserializationErrorContext::Context)
        .map_err(|_| BodyError::Invalid)?;
    RestrictedEvaluator::new(ext).interpret(expr.as_borrowed()).map_err(|_| BodyError::Invalid)
}

/// Builds the [`PolicyIndex`], once per engine. `enum_types` are the schema's enumerated entity
/// types (`Type` or `Namespace::Type`).
fn index(
    policies: &PolicySet,
    schema: &Schema,
    entities: &Entities,
    enum_types: &HashSet<String>,
    declared: &HashMap<String, Declared>,
) -> Result<PolicyIndex, AuthzError> {
    let t = types()?;
    let per_request_core = t.per_request();
    let per_request = per_request_core.map(public).into_iter().collect::<Result<Vec<_>, _>>()?;
    // Whether a request fits the schema depends only on its action, principal type and context
    // shape, and so is checked once per slice, unless a type built per request is an
    // enumeration: then it depends on entity ids and every request is validated.
    let validate_each_request = per_request_core.iter().any(|ty| enum_types.contains(&ty.to_string()));
    let action_type = public(&t.action)?;
    let actions: Vec<EntityUid> = schema.actions().filter(|a| a.type_name() == &action_type).cloned().collect();
    let [user, service, api_client, anonymous] = PrincipalKind::ALL.map(|k| public(t.of(k)));
    let principal_types = [user?, service?, api_client?, anonymous?];
    let fits = |action: &EntityUid, kind: PrincipalKind, shape: Shape| {
        if shape.body {
            // A body's value is the client's: such a request is validated on its own (so a
            // failure there is the body's), once the action is known to apply to the principal.
            let has_body = declared.get(action.id().unescaped()).is_some_and(|d| d.body.is_some());
            let ty = &principal_types[kind.slot()];
            let applies = schema.principals_for_action(action).is_some_and(|mut ps| ps.any(|p| p == ty));
            return match (has_body, applies) {
                (true, true) => Ok(()),
                (false, _) => Err(format!("{action} declares no body")),
                (true, false) => Err(format!("{action} does not apply to principal type {ty}")),
            };
        }
        sample_fits(schema, action, kind, shape)
    };
    let route = public(&t.route)?;
    // Per-request entities get their ancestors from the static ones; only if a static entity
    // could be a member of a per-request one must Cedar recompute the closure per request.
    let static_below_request_types = entities
        .iter()
        .any(|e| entities.ancestors(&e.uid()).is_some_and(|mut a| a.any(|u| per_request.contains(u.type_name()))));
    Ok(PolicyIndex::build(
        policies,
        base_entities(entities, &per_request),
        static_below_request_types,
        entities,
        &actions,
        (&principal_types, &route),
        (!validate_each_request).then_some(&fits as &FitsSchema<'_>),
    ))
}

/// Cedar's request validation for a request of this action, principal kind and context shape.
fn sample_fits(schema: &Schema, action: &EntityUid, kind: PrincipalKind, shape: Shape) -> Result<(), String> {
    let t = types().map_err(|e| e.to_string())?;
    let peer = uid(&t.service, "spiffe://sample/ns/sample/sa/sample");
    let context = context(&ContextParts {
        method: "GET",
        path: "/",
        query: "",
        host: "sample",
        scheme: "http",
        request_id: "",
        authn: if shape.authn { &["jwt"] } else { &[] },
        source_ip: shape.source_ip.then_some(IpAddr::from([127, 0, 0, 1])),
        peer: shape.peer.then_some(&peer),
        time: None,
        grpc: shape.grpc.then_some(("sample.v1.Sample", "Sample")),
        body: None,
    })
    .map_err(|e| e.to_string())?;
    let action = uid(&t.action, action.id().unescaped());
    let schema: &ValidatorSchema = schema.as_ref();
    CoreRequest::new(
        (uid(t.of(kind), "sample"), None),
        (action, None),
        (uid(&t.route, "sample"), None),
        context,
        Some(schema),
        Extensions::all_available(),
    )
    .map(|_| ())
    .map_err(|e| e.to_string())
}

/// Evaluates one request against one engine.
pub fn authorize(
    engine: &Engine,
    req: &RequestView<'_>,
    ids: &Identities,
    mapping: &CedarMapping,
) -> Result<AuthzOutcome, AuthzError> {
    authorize_with(engine, req, ids, mapping, false)
}

/// [`authorize`], with the outcome shared: a decision memo hit hands out the stored outcome
/// (one reference count, no copy and no allocation).
pub fn authorize_shared(
    engine: &Engine,
    req: &RequestView<'_>,
    ids: &Identities,
    mapping: &CedarMapping,
) -> Result<Arc<AuthzOutcome>, AuthzError> {
    decide(engine, req, ids, mapping, false).map(Decided::shared)
}

/// [`authorize`], or with `whole` against every policy and static entity (tests compare), which
/// never uses the decision memo.
pub(super) fn authorize_with(
    engine: &Engine,
    req: &RequestView<'_>,
    ids: &Identities,
    mapping: &CedarMapping,
    whole: bool,
) -> Result<AuthzOutcome, AuthzError> {
    decide(engine, req, ids, mapping, whole).map(Decided::owned)
}

/// An outcome as the memo holds it (shared), or one nobody else holds.
enum Decided {
    Shared(Arc<AuthzOutcome>),
    Owned(AuthzOutcome),
}

impl Decided {
    fn owned(self) -> AuthzOutcome {
        match self {
            Decided::Shared(o) => Arc::unwrap_or_clone(o),
            Decided::Owned(o) => o,
        }
    }

    fn shared(self) -> Arc<AuthzOutcome> {
        match self {
            Decided::Shared(o) => o,
            Decided::Owned(o) => Arc::new(o),
        }
    }
}

fn decide(
    engine: &Engine,
    req: &RequestView<'_>,
    ids: &Identities,
    mapping: &CedarMapping,
    whole: bool,
) -> Result<Decided, AuthzError> {
    let memo = if whole { None } else { engine.memo(mapping) };
    let (p, pending) = match prepare(engine, req, ids, mapping, whole, false, memo)? {
        Prep::Hit(outcome) => return Ok(Decided::Shared(outcome)),
        Prep::Eval(p, pending) => (p, pending),
    };
    let pset: &CorePolicySet = (*p.policies).as_ref();
    let response = CoreAuthorizer::new().is_authorized(p.request, pset, &p.entities);
    let errors: Vec<String> = response.diagnostics.errors.iter().map(|e| e.to_string()).collect();
    // Cedar reports them from a hash set: sort, so logs and headers are stable.
    let mut policies: Vec<String> = response.diagnostics.reason.iter().map(|p| p.to_string()).collect();
    policies.sort_unstable();
    let allowed = response.decision == CoreDecision::Allow && errors.is_empty();
    let outcome = AuthzOutcome {
        allowed,
        policies: policies.into(),
        errors,
        principal: p.principal.to_string().into(),
        action: p.action.to_string().into(),
        resource: p.resource.to_string().into(),
    };
    match (memo, pending) {
        (Some(memo), Some(pending)) => {
            let outcome = Arc::new(outcome);
            memo.insert(pending, &outcome);
            Ok(Decided::Shared(outcome))
        }
        _ => Ok(Decided::Owned(outcome)),
    }
}

/// One memo lookup, counted: a hit breaks, a miss continues with the key to store Cedar's
/// answer under (`None`: not memoizable).
fn ask(
    memo: &DecisionMemo,
    mapping: &CedarMapping,
    probe: &Probe<'_, '_>,
) -> ControlFlow<Arc<AuthzOutcome>, Option<Pending>> {
    match memo.lookup(probe) {
        Lookup::Hit(outcome) => {
            mapping.decision_memo.count("hit");
            ControlFlow::Break(outcome)
        }
        Lookup::Miss(p) => {
            mapping.decision_memo.count("miss");
            ControlFlow::Continue(Some(p))
        }
        Lookup::Bypass => {
            mapping.decision_memo.count("bypass");
            ControlFlow::Continue(None)
        }
    }
}

/// Everything Cedar is handed for one request.
struct Prepared {
    request: CoreRequest,
    policies: Arc<PolicySet>,
    entities: CoreEntities,
    principal: EntityUID,
    action: EntityUID,
    resource: EntityUID,
    /// The entities built for this request (principal, peer, route), when explaining.
    built: Vec<Arc<Entity>>,
}

/// The decision memo's answer, or what Cedar must evaluate (and, on a miss, the key to store
/// its answer under).
// Returned once and destructured at once: boxing `Prepared` would only add an allocation to
// every evaluated request.
#[allow(clippy::large_enum_variant)]
enum Prep {
    Hit(Arc<AuthzOutcome>),
    Eval(Prepared, Option<Pending>),
}

/// Selects the policies (all of them with `whole`), asks `memo` when given, and otherwise builds
/// the Cedar request and entities; keeps a copy of the per-request entities only when explaining
/// (not on the request path).
fn prepare(
    engine: &Engine,
    req: &RequestView<'_>,
    ids: &Identities,
    mapping: &CedarMapping,
    whole: bool,
    keep_built: bool,
    memo: Option<&DecisionMemo>,
) -> Result<Prep, AuthzError> {
    let t = types()?;
    let index = &engine.index;
    let (kind, principal_facts) = entities::principal_facts(ids);
    let service = req.host.split('.').next().unwrap_or("");
    let methods = ids.methods();
    // Only what the schema declares for this action is read: with no declared body, the body
    // is never looked at.
    let declared = if engine.declared.is_empty() { None } else { engine.declared.get(&*req.method) };
    let grpc = declared.filter(|d| d.grpc).and_then(|_| req.grpc());
    let body = match declared.and_then(|d| d.body.as_ref()) {
        Some((ty, required)) => match req.body().json(mapping.body_limits, *required)? {
            Some(json) => Some(body_value(json, ty)?),
            None => None,
        },
        None => None,
    };
    // The same values the context below is built from (the peer is present exactly when proven).
    let shape = Shape {
        source_ip: req.source_ip.is_some(),
        peer: ids.peer.is_some(),
        authn: !methods.is_empty(),
        grpc: grpc.is_some(),
        body: body.is_some(),
    };
    // Guards read the very values the context and the `Route` entity are built from.
    let facts = Facts {
        route_host: &req.host,
        route_path: &req.path,
        route_service: service,
        method: &req.method,
        path: &req.path,
        query: req.query,
        host: &req.host,
        scheme: req.scheme,
        request_id: req.request_id,
        principal: principal_facts,
    };
    let slice = index.slice(&req.method, kind, shape).map_err(|e| match e {
        Unfit::Action => AuthzError::Request(format!(
            "the schema declares no action {} for principal type {}",
            uid(&t.action, &req.method),
            t.of(kind)
        )),
        Unfit::Schema(m) => AuthzError::Request(m),
    })?;
    // At most one clock reading, and none unless read: the context below and the memo key hold
    // the same `time`.
    let time = ctx::RequestTime::new(req.time);
    // A body is the client's value, validated per request: never memoized, nor are requests
    // validated one by one (`validates_each_request`).
    let memo = memo.filter(|_| !shape.body && !index.validates_each_request());
    let probe = |scope, reads| Probe { scope, reads, shape: shape.bits(), req, ids, mapping, time: &time, grpc };
    // Before the guards when the slice allows it: the key then holds everything the slice's
    // guards and policies can read, so it decides the guards too, and a hit runs none of them.
    let early = match (memo, slice.pre_guard()) {
        (Some(memo), Some((id, reads))) => match ask(memo, mapping, &probe(Scope::Slice(id), reads)) {
            ControlFlow::Break(hit) => return Ok(Prep::Hit(hit)),
            ControlFlow::Continue(pending) => Some(pending),
        },
        _ => None,
    };
    let selected = index.select_in(slice, &facts);
    let pending = match (memo, early, selected.id) {
        // Asked before the guards: its answer holds for every set the guards could choose.
        (_, Some(pending), _) => pending,
        (Some(memo), None, Some(set)) => match ask(memo, mapping, &probe(Scope::Set(set), selected.reads)) {
            ControlFlow::Break(hit) => return Ok(Prep::Hit(hit)),
            ControlFlow::Continue(pending) => pending,
        },
        (Some(_), None, None) => {
            mapping.decision_memo.count("bypass");
            None
        }
        (None, ..) => None,
    };

    let base: &CoreEntities = if whole { engine.entities.as_ref() } else { (**index.entities()).as_ref() };
    let mut extra: Vec<Arc<Entity>> = Vec::with_capacity(3);
    // The peer is an entity of its own whenever present, so `context.peer` can point at it.
    let peer = ids.peer.as_ref().map(|p| {
        let (u, e) = service_entity(t, p);
        extra.push(Arc::new(e));
        u
    });
    let principal = entities::principal(t, ids, peer.as_ref(), base, &mut extra);
    let action = uid(&t.action, &req.method);
    let resource = entities::route(t, req, service, mapping, &mut extra);
    let context = context(&ContextParts {
        method: &req.method,
        path: &req.path,
        query: req.query,
        host: &req.host,
        scheme: req.scheme,
        request_id: req.request_id,
        authn: methods,
        source_ip: req.source_ip,
        peer: peer.as_ref(),
        time: Some(time.get()),
        grpc,
        body,
    })?;
    // A body is the client's value: a request carrying one is always validated, and a body
    // that does not have the declared type is the client's error (400).
    let request = if shape.body || index.validates_each_request() {
        let schema: &ValidatorSchema = engine.schema.as_ref();
        CoreRequest::new(
            (principal.clone(), None),
            (action.clone(), None),
            (resource.clone(), None),
            context,
            Some(schema),
            Extensions::all_available(),
        )
        .map_err(|e| {
            if shape.body { AuthzError::Body(BodyError::Invalid) } else { AuthzError::Request(e.to_string()) }
        })?
    } else {
        CoreRequest::new_unchecked(
            EntityUIDEntry::known(principal.clone(), None),
            EntityUIDEntry::known(action.clone(), None),
            EntityUIDEntry::known(resource.clone(), None),
            Some(context),
        )
    };
    let policies = if whole { index.whole() } else { selected.policies.clone() };
    // Per-request entities are leaves built by us from verified data, with their ancestors
    // already complete (group_ancestry), unless a static entity could sit below one of them.
    let tc = if whole || index.static_entities_reach_request_types() {
        TCComputation::ComputeNow
    } else {
        TCComputation::AssumeAlreadyComputed
    };
    let built = if keep_built { extra.clone() } else { Vec::new() };
    let entities = base
        .clone()
        .add_entities(extra, None::<&NoEntitiesSchema>, tc, Extensions::all_available())
        .map_err(|e| AuthzError::Entity(e.to_string()))?;
    Ok(Prep::Eval(Prepared { request, policies, entities, principal, action, resource, built }, pending))
}

/// What Cedar saw and did for one request, for `portcullis check --explain` (offline only: it
/// holds request data that must never reach logs or Envoy's metadata).
#[derive(Debug, Clone)]
pub struct Explanation {
    pub principal: String,
    pub action: String,
    pub resource: String,
    /// The context record, in Cedar syntax.
    pub context: String,
    /// The entities built for this request (principal, peer, route), in Cedar's notation.
    pub entities: Vec<String>,
    /// Policies handed to Cedar after indexing, sorted.
    pub considered: Vec<String>,
    /// Policies in the whole set.
    pub total: usize,
    /// Considered policies whose conditions held, sorted.
    pub satisfied: Vec<String>,
    /// The permits that allowed, or the forbids that denied, sorted.
    pub determining: Vec<String>,
    /// `(policy id, message)` for every evaluation error.
    pub errors: Vec<(String, String)>,
    pub allowed: bool,
}

/// One line for an entity: `Type::"id" attrs {…} tags {…} in [parents]`, sorted.
fn describe(e: &Entity) -> String {
    fn pairs<K: fmt::Display, V: fmt::Display>(it: impl Iterator<Item = (K, V)>) -> String {
        let mut v: Vec<String> = it.map(|(k, v)| format!("{k}: {v}")).collect();
        v.sort_unstable();
        v.join(", ")
    }
    let mut parents: Vec<String> = e.ancestors().map(|a| a.to_string()).collect();
    parents.sort_unstable();
    format!("{} attrs {{{}}} tags {{{}}} in [{}]", e.uid(), pairs(e.attrs()), pairs(e.tags()), parents.join(", "))
}

/// [`authorize`], explained: the same preparation and the same policies, then each considered
/// policy evaluated on its own to tell which were satisfied.
pub fn explain(
    engine: &Engine,
    req: &RequestView<'_>,
    ids: &Identities,
    mapping: &CedarMapping,
) -> Result<Explanation, AuthzError> {
    use cedar_policy_core::authorizer::AuthorizationError;
    let Prep::Eval(p, _) = prepare(engine, req, ids, mapping, false, true, None)? else {
        return Err(AuthzError::Request("explained without the decision memo".into()));
    };
    let pset: &CorePolicySet = (*p.policies).as_ref();
    let authorizer = CoreAuthorizer::new();
    let mut satisfied = Vec::new();
    for policy in pset.policies() {
        let mut one = CorePolicySet::new();
        if one.add(policy.clone()).is_ok()
            && !authorizer.is_authorized(p.request.clone(), &one, &p.entities).diagnostics.reason.is_empty()
        {
            satisfied.push(policy.id().to_string());
        }
    }
    satisfied.sort_unstable();
    let mut considered: Vec<String> = pset.policies().map(|p| p.id().to_string()).collect();
    considered.sort_unstable();
    let context = p.request.context().map(|c| c.to_string()).unwrap_or_default();
    let response = authorizer.is_authorized(p.request, pset, &p.entities);
    let mut determining: Vec<String> = response.diagnostics.reason.iter().map(|p| p.to_string()).collect();
    determining.sort_unstable();
    let errors: Vec<(String, String)> = response
        .diagnostics
        .errors
        .iter()
        .map(|e| match e {
            AuthorizationError::PolicyEvaluationError { id, error } => (id.to_string(), error.to_string()),
        })
        .collect();
    Ok(Explanation {
        allowed: response.decision == CoreDecision::Allow && errors.is_empty(),
        principal: p.principal.to_string(),
        action: p.action.to_string(),
        resource: p.resource.to_string(),
        context,
        entities: p.built.iter().map(|e| describe(e)).collect(),
        considered,
        total: engine.policy_count,
        satisfied,
        determining,
        errors,
    })
}
