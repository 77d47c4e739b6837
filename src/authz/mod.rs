//! Authorization with Cedar: builds the principal, action, resource and context for one request
//! from what authentication proved, and evaluates them against one policy snapshot. Knows
//! nothing of gRPC; never decides on anything but Cedar's answer (default deny, forbid wins),
//! and treats any evaluation error as a deny.
use std::collections::HashSet;
use std::time::{SystemTime, UNIX_EPOCH};

use cedar_policy::{
    Authorizer, Context, Decision as CedarDecision, Entity, EntityId, EntityTypeName, EntityUid, Request,
    RestrictedExpression,
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

fn uid(ty: &str, id: &str) -> Result<EntityUid, AuthzError> {
    let t: EntityTypeName = ty.parse().map_err(|e: cedar_policy::ParseErrors| AuthzError::Entity(e.to_string()))?;
    Ok(EntityUid::from_type_name_and_id(t, EntityId::new(id)))
}

fn s(v: &str) -> RestrictedExpression {
    RestrictedExpression::new_string(v.to_owned())
}

fn service_entity(p: &PeerIdentity) -> Result<(EntityUid, Entity), AuthzError> {
    let u = uid("Service", &p.spiffe_id)?;
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

fn groups(names: &[String]) -> Result<HashSet<EntityUid>, AuthzError> {
    names.iter().map(|g| uid("Group", g)).collect()
}

/// Evaluates one request against one snapshot.
pub fn authorize(
    snapshot: &PolicySnapshot,
    req: &RequestView<'_>,
    ids: &Identities,
    mapping: &CedarMapping,
) -> Result<AuthzOutcome, AuthzError> {
    let mut extra: Vec<Entity> = Vec::with_capacity(3);

    // The peer is an entity of its own whenever present, so `context.peer` can point at it.
    let peer = match &ids.peer {
        Some(p) => {
            let (u, e) = service_entity(p)?;
            extra.push(e);
            Some(u)
        }
        None => None,
    };

    let principal = if let Some(jwt) = &ids.jwt {
        let u = uid("User", &jwt.subject)?;
        let tags = jwt.claims.iter().map(|(k, v)| (k.clone(), s(v)));
        let e = Entity::new_with_tags(u.clone(), [("issuer".to_owned(), s(&jwt.issuer))], groups(&jwt.groups)?, tags)
            .map_err(|e| AuthzError::Entity(e.to_string()))?;
        extra.push(e);
        u
    } else if let Some(client) = &ids.api_client {
        let u = uid("ApiClient", &client.client)?;
        extra.push(Entity::new_no_attrs(u.clone(), groups(&client.groups)?));
        u
    } else if let Some(p) = &peer {
        p.clone()
    } else {
        let u = uid("Anonymous", "anonymous")?;
        extra.push(Entity::new_no_attrs(u.clone(), HashSet::new()));
        u
    };

    let action = uid("Action", &req.method)?;
    let service = req.host.split('.').next().unwrap_or("");
    let resource = uid("Route", &format!("{}{}", req.host, req.path))?;
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
        ctx.push(("source_ip".into(), RestrictedExpression::new_ip(ip.to_string())));
    }
    if let Some(p) = &peer {
        ctx.push(("peer".into(), RestrictedExpression::new_entity_uid(p.clone())));
    }
    let context = Context::from_pairs(ctx).map_err(|e| AuthzError::Request(e.to_string()))?;
    let request = Request::new(principal.clone(), action.clone(), resource.clone(), context, Some(&snapshot.schema))
        .map_err(|e| AuthzError::Request(e.to_string()))?;
    // Per-request entities are built by us from verified data; the static ones were
    // schema-checked at load.
    let entities =
        snapshot.entities.clone().add_entities(extra, None).map_err(|e| AuthzError::Entity(e.to_string()))?;

    let response = Authorizer::new().is_authorized(&request, &snapshot.policies, &entities);
    let diag = response.diagnostics();
    let errors: Vec<String> = diag.errors().map(|e| e.to_string()).collect();
    let policies: Vec<String> = diag.reason().map(|p| p.to_string()).collect();
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
