//! Authorization with Cedar: builds the principal, action, resource and context for one request
//! from what authentication proved, and evaluates them against one policy snapshot. Knows
//! nothing of gRPC; never decides on anything but Cedar's answer (default deny, forbid wins),
//! and treats any evaluation error as a deny.
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, LazyLock};
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use cedar_policy::{
    ActionConstraint, Authorizer, Context, Decision as CedarDecision, Entities, Entity, EntityId, EntityTypeName,
    EntityUid, Policy, PolicySet, PrincipalConstraint, Request, ResourceConstraint, RestrictedExpression,
};

use crate::authn::{Identities, PeerIdentity};
use crate::policy::PolicySnapshot;
use crate::request::RequestView;

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

/// Which request headers to expose as `Route` tags, and the per-snapshot policy slices.
#[derive(Debug, Clone, Default)]
pub struct CedarMapping {
    pub context_headers: Vec<String>,
    slices: Slices,
}

impl CedarMapping {
    /// Lower-cases the names and removes credential headers, which policies never see.
    pub fn new(context_headers: &[String], credential_headers: &[String]) -> Self {
        let context_headers = context_headers
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .filter(|h| !credential_headers.contains(h) && h != "cookie")
            .collect();
        Self { context_headers, slices: Slices::default() }
    }
}

/// At most this many (action, principal type) slices are kept per snapshot. Only actions the
/// schema declares get here (the request is validated first), so this is never reached in
/// practice; it only bounds memory.
const MAX_SLICES: usize = 256;

/// Cedar evaluates every policy of a set, and building each policy's condition clones its
/// expression, so cost grows with the whole policy set even when most policies are scoped to
/// other actions or principal types. A slice holds only the policies whose scope (`principal
/// is T`, `action == A`, `action in [..]`, `resource is T`) can match a request with a given
/// action and principal type. The policies left out are exactly those whose scope is false for
/// that request: Cedar would evaluate their condition to `false` without touching the body, so
/// the decision, the determining policies and the errors are the same.
#[derive(Clone, Default)]
struct Slices(Arc<ArcSwap<SliceMemo>>);

impl fmt::Debug for Slices {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Slices").field("cached", &self.0.load().sets.len()).finish()
    }
}

/// Slices for one snapshot, keyed by its content version (same version, same policies), and
/// the snapshot's static entities without those that cannot change an answer.
struct SliceMemo {
    version: String,
    source: String,
    entities: Arc<Entities>,
    sets: HashMap<(EntityUid, EntityTypeName), Arc<PolicySet>>,
}

impl Default for SliceMemo {
    fn default() -> Self {
        Self {
            version: String::new(),
            source: String::new(),
            entities: Arc::new(Entities::empty()),
            sets: HashMap::new(),
        }
    }
}

/// What one request is evaluated against.
type Evaluation = (Arc<PolicySet>, Arc<Entities>);

impl Slices {
    fn get(&self, snapshot: &PolicySnapshot, action: &EntityUid, principal: &EntityTypeName) -> Evaluation {
        let mut memo = self.0.load_full();
        if memo.version != snapshot.version || memo.source != snapshot.source {
            memo = Arc::new(SliceMemo {
                version: snapshot.version.clone(),
                source: snapshot.source.clone(),
                entities: Arc::new(base_entities(snapshot)),
                sets: HashMap::new(),
            });
            self.0.store(memo.clone());
        }
        let key = (action.clone(), principal.clone());
        if let Some(set) = memo.sets.get(&key) {
            return (set.clone(), memo.entities.clone());
        }
        let set = Arc::new(slice(snapshot, action, principal));
        // Readers never wait: a racing writer may drop this entry, which is only recomputed.
        if memo.sets.len() < MAX_SLICES {
            let mut sets = memo.sets.clone();
            sets.insert(key, set.clone());
            self.0.store(Arc::new(SliceMemo {
                version: memo.version.clone(),
                source: memo.source.clone(),
                entities: memo.entities.clone(),
                sets,
            }));
        }
        (set, memo.entities.clone())
    }
}

/// Cedar re-walks every entity of the store for each entity added to it, so every request paid
/// for every static entity. A static entity with no attributes, no tags and no parents changes
/// no answer: `e in X` is then `e == X` whether or not `e` is stored, `has`/`hasTag` are false
/// either way, and reading an attribute or tag is an error either way (strict validation
/// rejects such reads anyway). Those are left out, except for the types built per request, so
/// a conflict between a static and a per-request entity is still refused as before.
fn base_entities(snapshot: &PolicySnapshot) -> Entities {
    let per_request = |ty: &EntityTypeName| {
        types().map_or(true, |t| [&t.user, &t.service, &t.api_client, &t.anonymous, &t.route].contains(&ty))
    };
    let informative = |e: &&Entity| {
        let uid = e.uid();
        per_request(uid.type_name())
            || e.attrs().next().is_some()
            || e.tags().next().is_some()
            || snapshot.entities.ancestors(&uid).is_some_and(|mut a| a.next().is_some())
    };
    Entities::from_entities(snapshot.entities.iter().filter(informative).cloned(), None)
        .unwrap_or_else(|_| snapshot.entities.clone())
}

fn slice(snapshot: &PolicySnapshot, action: &EntityUid, principal: &EntityTypeName) -> PolicySet {
    let route = types().ok().map(|t| &t.route);
    let mut set = PolicySet::new();
    for p in snapshot.policies.policies() {
        if scope_may_match(p, action, principal, route, &snapshot.entities) && set.add(p.clone()).is_err() {
            // Cannot happen (ids are unique in the source set); fall back to every policy.
            return snapshot.policies.clone();
        }
    }
    set
}

/// False only when the policy's scope is certainly false for this action and principal type.
fn scope_may_match(
    p: &Policy,
    action: &EntityUid,
    principal: &EntityTypeName,
    route: Option<&EntityTypeName>,
    entities: &Entities,
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
        ActionConstraint::In(list) => list.iter().any(|a| a == action || entities.is_ancestor_of(a, action)),
    };
    // The resource is always a `Route`.
    let resource_ok = match (p.resource_constraint(), route) {
        (_, None) | (ResourceConstraint::Any | ResourceConstraint::In(_), _) => true,
        (ResourceConstraint::Eq(u), Some(r)) => u.type_name() == r,
        (ResourceConstraint::Is(t) | ResourceConstraint::IsIn(t, _), Some(r)) => &t == r,
    };
    principal_ok && action_ok && resource_ok
}

/// The entity type names of the Cedar model, parsed once: parsing a name runs Cedar's full
/// parser, which cost more than the rest of building a request's entities.
struct Types {
    user: EntityTypeName,
    group: EntityTypeName,
    service: EntityTypeName,
    api_client: EntityTypeName,
    anonymous: EntityTypeName,
    action: EntityTypeName,
    route: EntityTypeName,
}

static TYPES: LazyLock<Result<Types, String>> = LazyLock::new(|| {
    let t = |name: &str| name.parse::<EntityTypeName>().map_err(|e| format!("entity type {name}: {e}"));
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

fn types() -> Result<&'static Types, AuthzError> {
    TYPES.as_ref().map_err(|e| AuthzError::Entity(e.clone()))
}

/// Source addresses kept per worker thread; the map is emptied when full, so it stays bounded
/// whatever addresses arrive.
const MAX_CACHED_IPS: usize = 1024;

thread_local! {
    static IPS: RefCell<HashMap<IpAddr, RestrictedExpression>> = RefCell::new(HashMap::new());
}

/// `ip("…")` for a source address. Cedar parses the extension's name on every
/// `RestrictedExpression::new_ip`, which cost as much as the rest of the context: callers
/// repeat, so each address is built once per thread.
fn ip_expression(ip: IpAddr) -> RestrictedExpression {
    IPS.with(|cell| {
        let mut ips = cell.borrow_mut();
        if let Some(e) = ips.get(&ip) {
            return e.clone();
        }
        if ips.len() >= MAX_CACHED_IPS {
            ips.clear();
        }
        let e = RestrictedExpression::new_ip(ip.to_string());
        ips.insert(ip, e.clone());
        e
    })
}

fn uid(ty: &EntityTypeName, id: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(ty.clone(), EntityId::new(id))
}

fn s(v: &str) -> RestrictedExpression {
    RestrictedExpression::new_string(v.to_owned())
}

fn service_entity(t: &Types, p: &PeerIdentity) -> Result<(EntityUid, Entity), AuthzError> {
    let u = uid(&t.service, &p.spiffe_id);
    let e = Entity::new(
        u.clone(),
        [
            ("spiffe_id".to_owned(), s(&p.spiffe_id)),
            ("trust_domain".to_owned(), s(&p.trust_domain)),
            ("namespace".to_owned(), s(&p.namespace)),
            ("service_account".to_owned(), s(&p.service_account)),
        ]
        .into_iter()
        .collect(),
        HashSet::new(),
    )
    .map_err(|e| AuthzError::Entity(e.to_string()))?;
    Ok((u, e))
}

fn groups(t: &Types, names: &[String]) -> HashSet<EntityUid> {
    names.iter().map(|g| uid(&t.group, g)).collect()
}

/// Evaluates one request against one snapshot.
pub fn authorize(
    snapshot: &PolicySnapshot,
    req: &RequestView<'_>,
    ids: &Identities,
    mapping: &CedarMapping,
) -> Result<AuthzOutcome, AuthzError> {
    authorize_with(snapshot, req, ids, mapping, |action, principal| mapping.slices.get(snapshot, action, principal))
}

/// [`authorize`] with the policy set chosen by `policies` (tests compare slices with the whole set).
fn authorize_with(
    snapshot: &PolicySnapshot,
    req: &RequestView<'_>,
    ids: &Identities,
    mapping: &CedarMapping,
    evaluation: impl FnOnce(&EntityUid, &EntityTypeName) -> Evaluation,
) -> Result<AuthzOutcome, AuthzError> {
    let t = types()?;
    let mut extra: Vec<Entity> = Vec::with_capacity(3);

    // The peer is an entity of its own whenever present, so `context.peer` can point at it.
    let peer = match &ids.peer {
        Some(p) => {
            let (u, e) = service_entity(t, p)?;
            extra.push(e);
            Some(u)
        }
        None => None,
    };

    let principal = if let Some(jwt) = &ids.jwt {
        let u = uid(&t.user, &jwt.subject);
        let tags = jwt.claims.iter().map(|(k, v)| (k.clone(), s(v)));
        let e = Entity::new_with_tags(u.clone(), [("issuer".to_owned(), s(&jwt.issuer))], groups(t, &jwt.groups), tags)
            .map_err(|e| AuthzError::Entity(e.to_string()))?;
        extra.push(e);
        u
    } else if let Some(client) = &ids.api_client {
        let u = uid(&t.api_client, &client.client);
        extra.push(Entity::new_no_attrs(u.clone(), groups(t, &client.groups)));
        u
    } else if let Some(p) = &peer {
        p.clone()
    } else {
        let u = uid(&t.anonymous, "anonymous");
        extra.push(Entity::new_no_attrs(u.clone(), HashSet::new()));
        u
    };

    let action = uid(&t.action, &req.method);
    let service = req.host.split('.').next().unwrap_or("");
    let resource = uid(&t.route, &format!("{}{}", req.host, req.path));
    // All copies of a header, joined: a policy must not match on the first copy of a header
    // whose second copy the upstream may read.
    let route_tags = mapping.context_headers.iter().filter_map(|h| req.header_joined(h).map(|v| (h.clone(), s(&v))));
    extra.push(
        Entity::new_with_tags(
            resource.clone(),
            [("host".to_owned(), s(&req.host)), ("path".to_owned(), s(&req.path)), ("service".to_owned(), s(service))],
            [],
            route_tags,
        )
        .map_err(|e| AuthzError::Entity(e.to_string()))?,
    );

    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    let mut ctx: Vec<(String, RestrictedExpression)> = vec![
        ("method".into(), s(&req.method)),
        ("path".into(), s(&req.path)),
        ("query".into(), s(req.query)),
        ("host".into(), s(&req.host)),
        ("scheme".into(), s(req.scheme)),
        ("request_id".into(), s(req.request_id)),
        ("authn".into(), RestrictedExpression::new_set(ids.methods().into_iter().map(s))),
        ("time".into(), RestrictedExpression::new_long(now)),
    ];
    if let Some(ip) = req.source_ip {
        ctx.push(("source_ip".into(), ip_expression(ip)));
    }
    if let Some(p) = &peer {
        ctx.push(("peer".into(), RestrictedExpression::new_entity_uid(p.clone())));
    }
    let context = Context::from_pairs(ctx).map_err(|e| AuthzError::Request(e.to_string()))?;
    let request = Request::new(principal.clone(), action.clone(), resource.clone(), context, Some(&snapshot.schema))
        .map_err(|e| AuthzError::Request(e.to_string()))?;
    // Per-request entities are built by us from verified data; the static ones were
    // schema-checked at load.
    let (policies, base) = evaluation(&action, principal.type_name());
    let entities = (*base).clone().add_entities(extra, None).map_err(|e| AuthzError::Entity(e.to_string()))?;

    let response = Authorizer::new().is_authorized(&request, &policies, &entities);
    let diag = response.diagnostics();
    let errors: Vec<String> = diag.errors().map(|e| e.to_string()).collect();
    // Cedar reports them from a hash set: sort, so logs and headers are stable.
    let mut policies: Vec<String> = diag.reason().map(|p| p.to_string()).collect();
    policies.sort_unstable();
    let allowed = response.decision() == CedarDecision::Allow && errors.is_empty();
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

    #[test]
    fn slices_leave_out_only_policies_scoped_to_other_actions_or_principal_types() {
        let snap = snapshot(MIXED);
        let t = types().expect("types");
        let kept = |method: &str, ty: &EntityTypeName| -> Vec<String> {
            let mut ids: Vec<String> =
                slice(&snap, &uid(&t.action, method), ty).policies().map(|p| p.id().to_string()).collect();
            ids.sort();
            ids
        };
        assert_eq!(kept("GET", &t.api_client), ["batch-group", "get-only"]);
        assert_eq!(kept("POST", &t.api_client), ["batch-group", "route-only", "writes-frozen"]);
        assert_eq!(kept("DELETE", &t.service), ["batch-group", "service-only", "writes-frozen"]);
        assert_eq!(kept("HEAD", &t.anonymous), ["batch-group"]);
    }

    #[test]
    fn sliced_decisions_match_evaluating_every_policy() {
        let snap = snapshot(MIXED);
        let sliced = CedarMapping::default();
        for method in ["GET", "HEAD", "POST", "DELETE", "OPTIONS"] {
            for ids in [Identities::default(), client("batch", &["batch"]), client("other", &[])] {
                let out = decide(&snap, &sliced, method, &ids);
                // The same request against the whole policy set, without slicing.
                let req = request(method, "/api/orders");
                let view = RequestView::from_check(&req, &Limits::default()).expect("valid");
                let full = authorize_with(&snap, &view, &ids, &sliced, |_, _| {
                    (Arc::new(snap.policies.clone()), Arc::new(snap.entities.clone()))
                })
                .expect("evaluates");
                assert_eq!((out.allowed, &out.policies), (full.allowed, &full.policies), "{method} {ids:?}");
            }
        }
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
        let kept: Vec<String> = base_entities(&snap).iter().map(|e| e.uid().to_string()).collect();
        assert!(kept.contains(&r#"Group::"batch""#.to_owned()), "{kept:?}");
        assert!(!kept.iter().any(|u| u.contains("bare")), "{kept:?}");
        let mapping = CedarMapping::default();
        assert!(decide(&snap, &mapping, "GET", &client("a", &["batch"])).allowed, "batch is inside ops");
        assert!(decide(&snap, &mapping, "GET", &client("b", &["ops"])).allowed);
        assert!(!decide(&snap, &mapping, "GET", &client("c", &["bare"])).allowed);
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
