//! Authorization with Cedar: builds the principal, action, resource and context for one request
//! from what authentication proved, and evaluates them against one policy snapshot. Knows
//! nothing of gRPC; never decides on anything but Cedar's answer (default deny, forbid wins),
//! and treats any evaluation error as a deny.
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, LazyLock};
use std::time::{SystemTime, UNIX_EPOCH};

use cedar_policy::{Entities, EntityTypeName, EntityUid, PolicySet, Schema};
use cedar_policy_core::ast::{
    Context as CoreContext, Eid, Entity, EntityType, EntityUID, EntityUIDEntry, Name, PartialValue,
    PolicySet as CorePolicySet, Request as CoreRequest, RestrictedExpr, Value,
};
use cedar_policy_core::authorizer::{Authorizer as CoreAuthorizer, Decision as CoreDecision};
use cedar_policy_core::entities::{Dereference, Entities as CoreEntities, NoEntitiesSchema, TCComputation};
use cedar_policy_core::evaluator::RestrictedEvaluator;
use cedar_policy_core::extensions::Extensions;
use cedar_policy_core::validator::ValidatorSchema;

use crate::authn::{Identities, PeerIdentity};
use crate::policy::PolicySnapshot;
use crate::request::RequestView;

pub mod index;

pub use index::PolicyIndex;
use index::{Facts, FitsSchema, PrincipalFacts, PrincipalKind, Shape, Unfit};

/// Why an authorization request could not even be evaluated (each is a deny).
#[derive(Debug, thiserror::Error)]
pub enum AuthzError {
    #[error("cannot build Cedar entity: {0}")]
    Entity(String),
    #[error("request does not fit the schema: {0}")]
    Request(String),
}

/// Cedar's answer for one request.
#[derive(Debug, Clone)]
pub struct AuthzOutcome {
    pub allowed: bool,
    /// Determining policies: the permits that allowed, or the forbids that denied.
    pub policies: Vec<String>,
    /// Evaluation errors (any of them turns the answer into a deny).
    pub errors: Vec<String>,
    /// `Type::"id"` of the principal, for logs and headers.
    pub principal: String,
    pub action: String,
    pub resource: String,
}

/// Which request headers to expose as `Route` tags.
#[derive(Debug, Clone, Default)]
pub struct CedarMapping {
    pub context_headers: Vec<String>,
}

impl CedarMapping {
    /// Lower-cases the names and removes credential headers, which policies never see.
    pub fn new(context_headers: &[String], credential_headers: &[String]) -> Self {
        let context_headers = context_headers
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .filter(|h| !credential_headers.contains(h) && h != "cookie")
            .collect();
        Self { context_headers }
    }
}

/// Builds a snapshot's [`PolicyIndex`], once, when the snapshot is built. `enum_types` are the
/// schema's enumerated entity types (`Type` or `Namespace::Type`).
pub fn index(
    policies: &PolicySet,
    schema: &Schema,
    entities: &Entities,
    enum_types: &HashSet<String>,
) -> Result<PolicyIndex, AuthzError> {
    let t = types()?;
    let per_request_core = [&t.user, &t.service, &t.api_client, &t.anonymous, &t.route];
    let per_request = per_request_core.map(public).into_iter().collect::<Result<Vec<_>, _>>()?;
    // Whether a request fits the schema depends only on its action, principal type and context
    // shape, and so is checked once per slice, unless a type built per request is an
    // enumeration: then it depends on entity ids and every request is validated.
    let validate_each_request = per_request_core.iter().any(|ty| enum_types.contains(&ty.to_string()));
    let action_type = public(&t.action)?;
    let actions: Vec<EntityUid> = schema.actions().filter(|a| a.type_name() == &action_type).cloned().collect();
    let fits = |action: &EntityUid, kind: PrincipalKind, shape: Shape| sample_fits(schema, action, kind, shape);
    let [user, service, api_client, anonymous] = PrincipalKind::ALL.map(|k| public(t.of(k)));
    let principal_types = [user?, service?, api_client?, anonymous?];
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

/// Cedar re-walks every entity of the store for each entity added to it, so every request paid
/// for every static entity. A static entity with no attributes, no tags and no parents changes
/// no answer: `e in X` is then `e == X` whether or not `e` is stored, `has`/`hasTag` are false
/// either way, and reading an attribute or tag is an error either way (strict validation
/// rejects such reads anyway). Those are left out, except for the types built per request, so
/// a conflict between a static and a per-request entity is still refused as before.
fn base_entities(entities: &Entities, per_request: &[EntityTypeName]) -> Entities {
    let informative = |e: &&cedar_policy::Entity| {
        let uid = e.uid();
        per_request.contains(uid.type_name())
            || e.attrs().next().is_some()
            || e.tags().next().is_some()
            || entities.ancestors(&uid).is_some_and(|mut a| a.next().is_some())
    };
    Entities::from_entities(entities.iter().filter(informative).cloned(), None).unwrap_or_else(|_| entities.clone())
}

/// The entity type names of the Cedar model, parsed once: parsing a name runs Cedar's full
/// parser, which cost more than the rest of building a request's entities.
struct Types {
    user: EntityType,
    group: EntityType,
    service: EntityType,
    api_client: EntityType,
    anonymous: EntityType,
    action: EntityType,
    route: EntityType,
}

static TYPES: LazyLock<Result<Types, String>> = LazyLock::new(|| {
    let t = |name: &str| EntityType::from_normalized_str(name).map_err(|e| format!("entity type {name}: {e}"));
    Ok(Types {
        user: t("User")?,
        group: t("Group")?,
        service: t("Service")?,
        api_client: t("ApiClient")?,
        anonymous: t("Anonymous")?,
        action: t("Action")?,
        route: t("Route")?,
    })
});

impl Types {
    fn of(&self, kind: PrincipalKind) -> &EntityType {
        match kind {
            PrincipalKind::User => &self.user,
            PrincipalKind::Service => &self.service,
            PrincipalKind::ApiClient => &self.api_client,
            PrincipalKind::Anonymous => &self.anonymous,
        }
    }
}

/// An entity type as the public API names it (at load only: this runs Cedar's parser).
fn public(ty: &EntityType) -> Result<EntityTypeName, AuthzError> {
    ty.to_string().parse().map_err(|e| AuthzError::Entity(format!("entity type {ty}: {e}")))
}

fn types() -> Result<&'static Types, AuthzError> {
    TYPES.as_ref().map_err(|e| AuthzError::Entity(e.clone()))
}

/// Source addresses kept per worker thread; the map is emptied when full, so it stays bounded
/// whatever addresses arrive.
const MAX_CACHED_IPS: usize = 1024;

thread_local! {
    static IPS: RefCell<HashMap<IpAddr, Value>> = RefCell::new(HashMap::new());
}

/// `ip("…")` for a source address. Building the value runs Cedar's extension function (and
/// parses its name), which cost as much as the rest of the context: callers repeat, so each
/// address is built once per thread.
fn ip_value(ip: IpAddr) -> Result<Value, AuthzError> {
    IPS.with(|cell| {
        let mut ips = cell.borrow_mut();
        if let Some(v) = ips.get(&ip) {
            return Ok(v.clone());
        }
        let name: Name = "ip".parse().map_err(|e| AuthzError::Request(format!("ip extension: {e}")))?;
        let call = RestrictedExpr::call_extension_fn(name, [RestrictedExpr::val(ip.to_string())]);
        let v = RestrictedEvaluator::new(Extensions::all_available())
            .interpret(call.as_borrowed())
            .map_err(|e| AuthzError::Request(format!("source address {ip}: {e}")))?;
        if ips.len() >= MAX_CACHED_IPS {
            ips.clear();
        }
        ips.insert(ip, v.clone());
        Ok(v)
    })
}

fn uid(ty: &EntityType, id: &str) -> EntityUID {
    EntityUID::from_components(ty.clone(), Eid::new(id), None)
}

fn s(v: &str) -> PartialValue {
    PartialValue::from(v)
}

fn service_entity(t: &Types, p: &PeerIdentity) -> (EntityUID, Entity) {
    let u = uid(&t.service, &p.spiffe_id);
    let e = Entity::new_with_attr_partial_value(
        u.clone(),
        [
            ("spiffe_id".into(), s(&p.spiffe_id)),
            ("trust_domain".into(), s(&p.trust_domain)),
            ("namespace".into(), s(&p.namespace)),
            ("service_account".into(), s(&p.service_account)),
        ],
        HashSet::new(),
        HashSet::new(),
        [],
    );
    (u, e)
}

/// A per-request principal's parents (its groups) and, from the static entities, every
/// ancestor of those: the transitive closure Cedar would otherwise recompute over the whole
/// store for every request.
fn group_ancestry(t: &Types, names: &[String], base: &CoreEntities) -> (HashSet<EntityUID>, HashSet<EntityUID>) {
    let parents: HashSet<EntityUID> = names.iter().map(|g| uid(&t.group, g)).collect();
    let mut indirect = HashSet::new();
    for p in &parents {
        if let Dereference::Data(e) = base.entity(p) {
            indirect.extend(e.ancestors().filter(|a| !parents.contains(*a)).cloned());
        }
    }
    (indirect, parents)
}

/// The values of a request's Cedar context.
struct ContextParts<'a> {
    method: &'a str,
    path: &'a str,
    query: &'a str,
    host: &'a str,
    scheme: &'a str,
    request_id: &'a str,
    authn: &'a [&'static str],
    source_ip: Option<IpAddr>,
    peer: Option<&'a EntityUID>,
}

/// The one place a Cedar context is built: for requests, and for the samples the index checks
/// against the schema, so both have the same shape.
fn context(c: &ContextParts<'_>) -> Result<CoreContext, AuthzError> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    let mut ctx: BTreeMap<_, Value> = BTreeMap::from([
        ("method".into(), c.method.into()),
        ("path".into(), c.path.into()),
        ("query".into(), c.query.into()),
        ("host".into(), c.host.into()),
        ("scheme".into(), c.scheme.into()),
        ("request_id".into(), c.request_id.into()),
        ("authn".into(), Value::set(c.authn.iter().map(|m| Value::from(*m)), None)),
        ("time".into(), now.into()),
    ]);
    if let Some(ip) = c.source_ip {
        ctx.insert("source_ip".into(), ip_value(ip)?);
    }
    if let Some(p) = c.peer {
        ctx.insert("peer".into(), p.clone().into());
    }
    Ok(CoreContext::Value(Arc::new(ctx)))
}

/// Evaluates one request against one snapshot.
pub fn authorize(
    snapshot: &PolicySnapshot,
    req: &RequestView<'_>,
    ids: &Identities,
    mapping: &CedarMapping,
) -> Result<AuthzOutcome, AuthzError> {
    authorize_with(snapshot, req, ids, mapping, false)
}

/// [`authorize`], or with `whole` against every policy and static entity (tests compare).
fn authorize_with(
    snapshot: &PolicySnapshot,
    req: &RequestView<'_>,
    ids: &Identities,
    mapping: &CedarMapping,
    whole: bool,
) -> Result<AuthzOutcome, AuthzError> {
    let t = types()?;
    let index = &snapshot.index;
    let base: &CoreEntities = if whole { snapshot.entities.as_ref() } else { (**index.entities()).as_ref() };
    let mut extra: Vec<Arc<Entity>> = Vec::with_capacity(3);

    // The peer is an entity of its own whenever present, so `context.peer` can point at it.
    let peer = ids.peer.as_ref().map(|p| {
        let (u, e) = service_entity(t, p);
        extra.push(Arc::new(e));
        u
    });

    let (principal, kind, principal_facts) = if let Some(jwt) = &ids.jwt {
        let u = uid(&t.user, &jwt.subject);
        let (indirect, parents) = group_ancestry(t, &jwt.groups, base);
        let tags = jwt.claims.iter().map(|(k, v)| (k.as_str().into(), s(v)));
        let e = Entity::new_with_attr_partial_value(
            u.clone(),
            [("issuer".into(), s(&jwt.issuer))],
            indirect,
            parents,
            tags,
        );
        extra.push(Arc::new(e));
        (u, PrincipalKind::User, PrincipalFacts::User { issuer: &jwt.issuer })
    } else if let Some(client) = &ids.api_client {
        let u = uid(&t.api_client, &client.client);
        let (indirect, parents) = group_ancestry(t, &client.groups, base);
        extra.push(Arc::new(Entity::new_with_attr_partial_value(u.clone(), [], indirect, parents, [])));
        (u, PrincipalKind::ApiClient, PrincipalFacts::None)
    } else if let (Some(u), Some(p)) = (&peer, &ids.peer) {
        let facts = PrincipalFacts::Service {
            spiffe_id: &p.spiffe_id,
            trust_domain: &p.trust_domain,
            namespace: &p.namespace,
            service_account: &p.service_account,
        };
        (u.clone(), PrincipalKind::Service, facts)
    } else {
        let u = uid(&t.anonymous, "anonymous");
        extra.push(Arc::new(Entity::new_with_attr_partial_value(u.clone(), [], HashSet::new(), HashSet::new(), [])));
        (u, PrincipalKind::Anonymous, PrincipalFacts::None)
    };

    let action = uid(&t.action, &req.method);
    let service = req.host.split('.').next().unwrap_or("");
    let resource = uid(&t.route, &format!("{}{}", req.host, req.path));
    // All copies of a header, joined: a policy must not match on the first copy of a header
    // whose second copy the upstream may read.
    let route_tags =
        mapping.context_headers.iter().filter_map(|h| req.header_joined(h).map(|v| (h.as_str().into(), s(&v))));
    extra.push(Arc::new(Entity::new_with_attr_partial_value(
        resource.clone(),
        [("host".into(), s(&req.host)), ("path".into(), s(&req.path)), ("service".into(), s(service))],
        HashSet::new(),
        HashSet::new(),
        route_tags,
    )));

    let methods = ids.methods();
    let parts = ContextParts {
        method: &req.method,
        path: &req.path,
        query: req.query,
        host: &req.host,
        scheme: req.scheme,
        request_id: req.request_id,
        authn: &methods,
        source_ip: req.source_ip,
        peer: peer.as_ref(),
    };
    let context = context(&parts)?;
    let request = if index.validates_each_request() {
        let schema: &ValidatorSchema = snapshot.schema.as_ref();
        CoreRequest::new(
            (principal.clone(), None),
            (action.clone(), None),
            (resource.clone(), None),
            context,
            Some(schema),
            Extensions::all_available(),
        )
        .map_err(|e| AuthzError::Request(e.to_string()))?
    } else {
        CoreRequest::new_unchecked(
            EntityUIDEntry::known(principal.clone(), None),
            EntityUIDEntry::known(action.clone(), None),
            EntityUIDEntry::known(resource.clone(), None),
            Some(context),
        )
    };
    // Guards read the very values the context and the `Route` entity were built from.
    let shape =
        Shape { source_ip: parts.source_ip.is_some(), peer: parts.peer.is_some(), authn: !parts.authn.is_empty() };
    let facts = Facts {
        route_host: parts.host,
        route_path: parts.path,
        route_service: service,
        method: parts.method,
        path: parts.path,
        query: parts.query,
        host: parts.host,
        scheme: parts.scheme,
        request_id: parts.request_id,
        principal: principal_facts,
    };
    let policies = index.select(&req.method, kind, shape, &facts).map_err(|e| match e {
        Unfit::Action => AuthzError::Request(format!(
            "the schema declares no action {action} for principal type {}",
            principal.entity_type()
        )),
        Unfit::Schema(m) => AuthzError::Request(m),
    })?;
    let policies = if whole { index.whole() } else { policies };
    // Per-request entities are leaves built by us from verified data, with their ancestors
    // already complete (group_ancestry), unless a static entity could sit below one of them.
    let tc = if whole || index.static_entities_reach_request_types() {
        TCComputation::ComputeNow
    } else {
        TCComputation::AssumeAlreadyComputed
    };
    let entities = base
        .clone()
        .add_entities(extra, None::<&NoEntitiesSchema>, tc, Extensions::all_available())
        .map_err(|e| AuthzError::Entity(e.to_string()))?;

    let pset: &CorePolicySet = (*policies).as_ref();
    let response = CoreAuthorizer::new().is_authorized(request, pset, &entities);
    let errors: Vec<String> = response.diagnostics.errors.iter().map(|e| e.to_string()).collect();
    // Cedar reports them from a hash set: sort, so logs and headers are stable.
    let mut policies: Vec<String> = response.diagnostics.reason.iter().map(|p| p.to_string()).collect();
    policies.sort_unstable();
    let allowed = response.decision == CoreDecision::Allow && errors.is_empty();
    Ok(AuthzOutcome {
        allowed,
        policies,
        errors,
        principal: principal.to_string(),
        action: action.to_string(),
        resource: resource.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use crate::authn::ApiClientIdentity;
    use crate::config::Limits;
    use crate::policy::{DocKind, PolicyDocument};
    use crate::proto::auth::{AttributeContext, CheckRequest, attribute_context};

    const SCHEMA: &str = include_str!("../../examples/demo/policies/portcullis.cedarschema");

    fn snapshot(policies: &str) -> PolicySnapshot {
        let docs = [
            PolicyDocument { origin: "s.cedarschema".into(), kind: DocKind::Schema, text: SCHEMA.into() },
            PolicyDocument { origin: "p.cedar".into(), kind: DocKind::Policies, text: policies.into() },
        ];
        PolicySnapshot::build(&docs, "test").expect("test policies build")
    }

    fn request(method: &str, path: &str) -> CheckRequest {
        CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(attribute_context::Request {
                    time: None,
                    http: Some(attribute_context::HttpRequest {
                        method: method.into(),
                        path: path.into(),
                        host: "shop.svc".into(),
                        ..Default::default()
                    }),
                }),
                ..Default::default()
            }),
        }
    }

    fn client(name: &str, groups: &[&str]) -> Identities {
        Identities {
            api_client: Some(Arc::new(ApiClientIdentity {
                client: name.into(),
                groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            })),
            ..Default::default()
        }
    }

    fn decide(snap: &PolicySnapshot, mapping: &CedarMapping, method: &str, ids: &Identities) -> AuthzOutcome {
        let req = request(method, "/api/orders");
        let view = RequestView::from_check(&req, &Limits::default()).expect("valid request");
        authorize(snap, &view, ids, mapping).expect("evaluates")
    }

    const MIXED: &str = r#"
        @id("service-only") permit (principal is Service, action, resource);
        @id("get-only") permit (principal, action == Action::"GET", resource);
        @id("writes-frozen") forbid (principal, action in Action::"write", resource);
        @id("batch-group") permit (principal in Group::"batch", action, resource);
        @id("route-only") permit (principal is ApiClient, action == Action::"POST", resource is Route);
    "#;

    #[test]
    fn forbids_scoped_to_an_action_group_still_apply_to_its_members() {
        let snap = snapshot(MIXED);
        let mapping = CedarMapping::default();
        let out = decide(&snap, &mapping, "POST", &client("batch", &["batch"]));
        assert!(!out.allowed);
        assert_eq!(out.policies, vec!["writes-frozen".to_owned()]);
    }

    /// The ids of the policies the index hands Cedar for a request with no guards involved.
    fn selected(snap: &PolicySnapshot, method: &str, kind: PrincipalKind) -> Vec<String> {
        let facts = Facts {
            route_host: "h",
            route_path: "/",
            route_service: "h",
            method,
            path: "/",
            query: "",
            host: "h",
            scheme: "http",
            request_id: "",
            principal: PrincipalFacts::None,
        };
        let shape = Shape { source_ip: false, peer: false, authn: kind != PrincipalKind::Anonymous };
        let set = snap.index.select(method, kind, shape, &facts).expect("fits the schema");
        let mut ids: Vec<String> = set.policies().map(|p| p.id().to_string()).collect();
        ids.sort();
        ids
    }

    #[test]
    fn slices_leave_out_only_policies_scoped_to_other_actions_or_principal_types() {
        let snap = snapshot(MIXED);
        assert_eq!(selected(&snap, "GET", PrincipalKind::ApiClient), ["batch-group", "get-only"]);
        assert_eq!(selected(&snap, "POST", PrincipalKind::ApiClient), ["batch-group", "route-only", "writes-frozen"]);
        assert_eq!(selected(&snap, "DELETE", PrincipalKind::Service), ["batch-group", "service-only", "writes-frozen"]);
        assert_eq!(selected(&snap, "HEAD", PrincipalKind::Anonymous), ["batch-group"]);
    }

    #[test]
    fn sliced_decisions_match_evaluating_every_policy() {
        let snap = snapshot(MIXED);
        let mapping = CedarMapping::default();
        for method in ["GET", "HEAD", "POST", "DELETE", "OPTIONS"] {
            for ids in [Identities::default(), client("batch", &["batch"]), client("other", &[])] {
                let out = decide(&snap, &mapping, method, &ids);
                // The same request against the whole policy set, without slicing.
                let req = request(method, "/api/orders");
                let view = RequestView::from_check(&req, &Limits::default()).expect("valid");
                let full = authorize_with(&snap, &view, &ids, &mapping, true).expect("evaluates");
                assert_eq!((out.allowed, &out.policies), (full.allowed, &full.policies), "{method} {ids:?}");
            }
        }
    }

    /// Policies whose leading conjuncts the index reads (equality, `like`, negation, `unless`,
    /// principal attributes) mixed with ones it must leave to Cedar (`||`, tags, and an
    /// overflow: an evaluation error, so a deny, when its guard holds).
    const GUARDED: &str = r#"
        @id("api") permit (principal, action in Action::"read", resource) when { resource.path like "/api/*" };
        @id("evil") forbid (principal, action, resource) when { resource.host == "evil.example" };
        @id("tenant") permit (principal is User, action == Action::"GET", resource)
            when { resource.host == "a.svc" && principal.hasTag("tenant") && principal.getTag("tenant") == "t1" };
        @id("err") permit (principal is User, action, resource)
            when { resource.path like "/err*" && context.time * 1000000000000 > 0 };
        @id("https-only") forbid (principal, action, resource)
            when { resource.service == "secure" } unless { context.scheme == "https" };
        @id("frontend") permit (principal is Service, action, resource)
            when { principal.namespace == "frontend" && resource.path like "/svc/*" };
        @id("post-orders") permit (principal, action, resource)
            when { context.method == "POST" && resource.service == "orders" };
        @id("json") permit (principal, action in Action::"read", resource)
            when { !(resource.path like "/private*") && resource.path like "*.json" };
        @id("star") permit (principal, action, resource) when { context.path like "/p\*x*" };
        @id("either") permit (principal, action, resource)
            when { resource.path == "/exact" || resource.path == "/other" };
        @id("admins") permit (principal in Group::"admins", action, resource) when { resource.path like "/admin*" };
        @id("unicode") permit (principal, action, resource) when { resource.path like "/\u{fc}*\u{df}" };
        @id("issuer") forbid (principal is User, action, resource)
            when { principal.issuer == "https://bad" && context.host like "*.svc" };
        @id("query") permit (principal, action == Action::"DELETE", resource)
            when { context.query == "confirm=1" && resource.host like "*.svc" };
    "#;

    fn user(issuer: &str, groups: &[&str], claims: &[(&str, &str)]) -> Identities {
        Identities {
            jwt: Some(Arc::new(crate::authn::JwtIdentity::for_tests(issuer, "alice", groups, claims))),
            ..Default::default()
        }
    }

    fn peer(ns: &str) -> crate::authn::PeerIdentity {
        crate::authn::PeerIdentity {
            spiffe_id: format!("spiffe://cluster.local/ns/{ns}/sa/web"),
            trust_domain: "cluster.local".into(),
            namespace: ns.into(),
            service_account: "web".into(),
        }
    }

    fn callers() -> Vec<Identities> {
        let via_peer = |mut ids: Identities, ns: &str| {
            ids.peer = Some(peer(ns));
            ids
        };
        vec![
            Identities::default(),
            client("batch", &[]),
            client("ops", &["admins"]),
            user("https://idp", &[], &[]),
            user("https://idp", &["admins"], &[("tenant", "t1")]),
            user("https://bad", &[], &[("tenant", "t2"), ("missing", "x")]),
            via_peer(Identities::default(), "frontend"),
            via_peer(Identities::default(), "backend"),
            via_peer(user("https://idp", &[], &[("tenant", "t1")]), "frontend"),
        ]
    }

    #[test]
    fn guarded_selection_decides_exactly_as_every_policy_would() {
        let snap = snapshot(GUARDED);
        let mapping = CedarMapping::default();
        let hosts = ["a.svc", "evil.example", "orders.svc", "secure.svc", "b.other"];
        let paths = [
            "/api/x",
            "/api",
            "/err1",
            "/ok",
            "/svc/1",
            "/private/a.json",
            "/pub/a.json",
            "/p*x/y",
            "/pax",
            "/exact",
            "/other",
            "/admin/x",
            "/\u{fc}a\u{df}",
            "/\u{fc}",
            "/a*b",
        ];
        let mut compared = 0;
        let mut outcomes = HashSet::new();
        for method in ["GET", "POST", "DELETE"] {
            for host in hosts {
                for path in paths {
                    for (scheme, query) in [("http", ""), ("https", "confirm=1")] {
                        let mut req = request(method, path);
                        if let Some(http) =
                            req.attributes.as_mut().and_then(|a| a.request.as_mut()).and_then(|r| r.http.as_mut())
                        {
                            http.host = host.into();
                            http.scheme = scheme.into();
                            http.query = query.into();
                        }
                        let Ok(view) = RequestView::from_check(&req, &Limits::default()) else { continue };
                        for ids in callers() {
                            let got = authorize(&snap, &view, &ids, &mapping).expect("evaluates");
                            let want = authorize_with(&snap, &view, &ids, &mapping, true).expect("evaluates");
                            assert_eq!(
                                (got.allowed, &got.policies, &got.errors),
                                (want.allowed, &want.policies, &want.errors),
                                "{method} {host}{path} {scheme} {ids:?}"
                            );
                            outcomes.insert((got.allowed, got.policies.clone(), !got.errors.is_empty()));
                            compared += 1;
                        }
                    }
                }
            }
        }
        assert!(compared > 1000, "only {compared} requests compared");
        // The corpus reaches allows, forbids, no-permit denials and evaluation errors.
        assert!(outcomes.len() > 15, "too few distinct outcomes: {outcomes:?}");
        assert!(outcomes.iter().any(|(_, _, err)| *err), "no request hit an evaluation error");
    }

    #[test]
    fn the_index_hands_cedar_only_the_policies_whose_guards_hold() {
        let snap = snapshot(GUARDED);
        let facts = |host, path| Facts {
            route_host: host,
            route_path: path,
            route_service: host.split('.').next().unwrap_or(""),
            method: "GET",
            path,
            query: "",
            host,
            scheme: "http",
            request_id: "",
            principal: PrincipalFacts::User { issuer: "https://idp" },
        };
        let shape = Shape { source_ip: false, peer: false, authn: true };
        let ids = |host, path| -> Vec<String> {
            let set = snap.index.select("GET", PrincipalKind::User, shape, &facts(host, path)).expect("fits");
            let mut v: Vec<String> = set.policies().map(|p| p.id().to_string()).collect();
            v.sort();
            v
        };
        // `either` (a disjunction) is always left to Cedar; the rest only when their guards hold.
        assert_eq!(ids("b.other", "/ok"), ["either"]);
        assert_eq!(ids("b.other", "/api/x"), ["api", "either"]);
        assert_eq!(ids("a.svc", "/a.json"), ["either", "json", "tenant"]);
        assert_eq!(ids("evil.example", "/err"), ["either", "err", "evil"]);
    }

    fn snapshot_with_schema(schema: String, policies: &str) -> PolicySnapshot {
        let docs = [
            PolicyDocument { origin: "s.cedarschema".into(), kind: DocKind::Schema, text: schema },
            PolicyDocument { origin: "p.cedar".into(), kind: DocKind::Policies, text: policies.into() },
        ];
        PolicySnapshot::build(&docs, "test").expect("test policies build")
    }

    #[test]
    fn requests_whose_shape_the_schema_does_not_declare_are_refused() {
        // This schema's context has no `source_ip`: a request that carries one does not fit it.
        let snap = snapshot_with_schema(
            SCHEMA.replace("source_ip?: ipaddr,", ""),
            r#"@id("open") permit (principal, action, resource);"#,
        );
        let mapping = CedarMapping::default();
        assert!(decide(&snap, &mapping, "GET", &Identities::default()).allowed);
        let mut req = request("GET", "/api/orders");
        if let Some(a) = req.attributes.as_mut() {
            use crate::proto::core::{Address, SocketAddress, address};
            a.source = Some(attribute_context::Peer {
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        address: "10.0.0.1".into(),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            });
        }
        let view = RequestView::from_check(&req, &Limits::default()).expect("valid");
        let err = authorize(&snap, &view, &Identities::default(), &mapping).expect_err("does not fit");
        assert!(err.to_string().contains("context"), "{err}");
        // Undeclared actions are refused too.
        let propfind = request("PROPFIND", "/");
        let view = RequestView::from_check(&propfind, &Limits::default()).expect("valid");
        assert!(authorize(&snap, &view, &Identities::default(), &mapping).is_err());
    }

    #[test]
    fn enumerated_principal_types_are_validated_on_every_request() {
        // Whether an `ApiClient` fits now depends on its id, which no per-slice check can know.
        let snap = snapshot_with_schema(
            SCHEMA.replace("entity ApiClient in [Group];", r#"entity ApiClient enum ["batch"];"#),
            r#"@id("open") permit (principal, action, resource);"#,
        );
        assert!(snap.index.validates_each_request());
        let mapping = CedarMapping::default();
        assert!(decide(&snap, &mapping, "GET", &client("batch", &[])).allowed);
        let get = request("GET", "/");
        let view = RequestView::from_check(&get, &Limits::default()).expect("valid");
        assert!(authorize(&snap, &view, &client("intruder", &[]), &mapping).is_err(), "not a declared client");
        // The demo schema has no enumerations: requests are checked once per slice.
        assert!(!snapshot(MIXED).index.validates_each_request());
    }

    #[test]
    fn source_address_policies_hold_for_repeated_and_many_distinct_callers() {
        use crate::proto::core::{Address, SocketAddress, address};
        let snap = snapshot(
            r#"@id("internal") permit (principal, action, resource)
               when { context has source_ip && context.source_ip.isInRange(ip("10.0.0.0/8")) };"#,
        );
        let mapping = CedarMapping::default();
        let from = |ip: String| {
            let mut req = request("GET", "/api/orders");
            if let Some(a) = req.attributes.as_mut() {
                a.source = Some(attribute_context::Peer {
                    address: Some(Address {
                        address: Some(address::Address::SocketAddress(SocketAddress {
                            address: ip,
                            ..Default::default()
                        })),
                    }),
                    ..Default::default()
                });
            }
            let view = RequestView::from_check(&req, &Limits::default()).expect("valid");
            authorize(&snap, &view, &Identities::default(), &mapping).expect("evaluates").allowed
        };
        // More distinct addresses than the per-thread cache holds, each asked twice.
        for i in 0..(MAX_CACHED_IPS as u32 + 10) {
            let (inside, outside) =
                (format!("10.0.{}.{}", i / 250, i % 250), format!("192.168.{}.{}", i / 250, i % 250));
            for _ in 0..2 {
                assert!(from(inside.clone()), "{inside} is internal");
                assert!(!from(outside.clone()), "{outside} is not internal");
            }
        }
    }

    #[test]
    fn group_hierarchies_survive_leaving_out_bare_static_entities() {
        let docs = [
            PolicyDocument {
                origin: "s.cedarschema".into(),
                kind: DocKind::Schema,
                text: SCHEMA.replace("entity Group;", "entity Group in [Group];"),
            },
            PolicyDocument {
                origin: "g.entities.json".into(),
                kind: DocKind::Entities,
                text: r#"[
                    {"uid": {"type": "Group", "id": "batch"}, "attrs": {}, "parents": [{"type": "Group", "id": "ops"}]},
                    {"uid": {"type": "Group", "id": "ops"}, "attrs": {}, "parents": []},
                    {"uid": {"type": "Group", "id": "bare"}, "attrs": {}, "parents": []}
                ]"#
                .into(),
            },
            PolicyDocument {
                origin: "p.cedar".into(),
                kind: DocKind::Policies,
                text: r#"@id("ops") permit (principal in Group::"ops", action, resource);"#.into(),
            },
        ];
        let snap = PolicySnapshot::build(&docs, "test").expect("builds");
        let t = types().expect("types");
        let per_request =
            [&t.user, &t.service, &t.api_client, &t.anonymous, &t.route].map(|ty| public(ty).expect("name"));
        let kept: Vec<String> =
            base_entities(&snap.entities, &per_request).iter().map(|e| e.uid().to_string()).collect();
        assert!(kept.contains(&r#"Group::"batch""#.to_owned()), "{kept:?}");
        assert!(!kept.iter().any(|u| u.contains("bare")), "{kept:?}");
        let mapping = CedarMapping::default();
        assert!(decide(&snap, &mapping, "GET", &client("a", &["batch"])).allowed, "batch is inside ops");
        assert!(decide(&snap, &mapping, "GET", &client("b", &["ops"])).allowed);
        assert!(!decide(&snap, &mapping, "GET", &client("c", &["bare"])).allowed);
    }

    #[test]
    fn static_entities_below_a_per_request_principal_still_get_its_groups() {
        // A static group sits below an API client, which is built per request in another group:
        // `inner in outer` holds only through the per-request entity, so the closure must be
        // recomputed per request for such a schema.
        let docs = [
            PolicyDocument {
                origin: "s.cedarschema".into(),
                kind: DocKind::Schema,
                text: SCHEMA.replace("entity Group;", "entity Group in [ApiClient];"),
            },
            PolicyDocument {
                origin: "g.entities.json".into(),
                kind: DocKind::Entities,
                text: r#"[
                    {"uid": {"type": "Group", "id": "inner"}, "attrs": {},
                     "parents": [{"type": "ApiClient", "id": "batch"}]}
                ]"#
                .into(),
            },
            PolicyDocument {
                origin: "p.cedar".into(),
                kind: DocKind::Policies,
                text:
                    r#"@id("nested") permit (principal, action, resource) when { Group::"inner" in Group::"outer" };"#
                        .into(),
            },
        ];
        let snap = PolicySnapshot::build(&docs, "test").expect("builds");
        assert!(snap.index.static_entities_reach_request_types());
        let mapping = CedarMapping::default();
        assert!(decide(&snap, &mapping, "GET", &client("batch", &["outer"])).allowed);
        assert!(!decide(&snap, &mapping, "GET", &client("batch", &[])).allowed);
        assert!(!snapshot(MIXED).index.static_entities_reach_request_types());
    }

    #[test]
    fn a_new_snapshot_is_never_answered_from_the_old_ones_slices() {
        let mapping = CedarMapping::default();
        let ids = client("batch", &[]);
        let open = snapshot(r#"@id("open") permit (principal, action, resource);"#);
        assert!(decide(&open, &mapping, "GET", &ids).allowed);
        let closed = snapshot(r#"@id("admins") permit (principal in Group::"admins", action, resource);"#);
        let out = decide(&closed, &mapping, "GET", &ids);
        assert!(!out.allowed, "answered from the previous snapshot's slice: {out:?}");
        assert!(decide(&open, &mapping, "GET", &ids).allowed);
    }
}
