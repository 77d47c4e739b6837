//! The entities of one request (principal, peer, route), built from what authentication proved,
//! and the static entities every request starts from.
use std::collections::HashSet;
use std::sync::Arc;

use cedar_policy::{Entities, EntityTypeName};
use cedar_policy_core::ast::{Eid, Entity, EntityType, EntityUID, PartialValue, Value};
use cedar_policy_core::entities::{Dereference, Entities as CoreEntities};

use super::CedarMapping;
use super::guard::PrincipalFacts;
use super::model::{self, PrincipalKind, Types};
use crate::authn::{Identities, PeerIdentity, PrincipalRef};
use crate::request::{RequestView, RouteFact, RouteFactSource};

pub(super) fn uid(ty: &EntityType, id: &str) -> EntityUID {
    EntityUID::from_components(ty.clone(), Eid::new(id), None)
}

fn s(v: &str) -> PartialValue {
    PartialValue::from(v)
}

fn string_set(v: &[String]) -> PartialValue {
    PartialValue::from(Value::set(v.iter().map(|s| Value::from(s.as_str())), None))
}

/// Cedar re-walks every entity of the store for each entity added to it, so every request paid
/// for every static entity. A static entity with no attributes, no tags and no parents changes
/// no answer: `e in X` is then `e == X` whether or not `e` is stored, `has`/`hasTag` are false
/// either way, and reading an attribute or tag is an error either way (strict validation
/// rejects such reads anyway). Those are left out, except for the types built per request, so
/// a conflict between a static and a per-request entity is still refused as before.
pub(super) fn base_entities(entities: &Entities, per_request: &[EntityTypeName]) -> Entities {
    let informative = |e: &&cedar_policy::Entity| {
        let uid = e.uid();
        per_request.contains(uid.type_name())
            || e.attrs().next().is_some()
            || e.tags().next().is_some()
            || entities.ancestors(&uid).is_some_and(|mut a| a.next().is_some())
    };
    Entities::from_entities(entities.iter().filter(informative).cloned(), None).unwrap_or_else(|_| entities.clone())
}

/// The peer's `Service` entity.
pub(super) fn service_entity(t: &Types, p: &PeerIdentity) -> (EntityUID, Entity) {
    let u = uid(&t.service, &p.spiffe_id);
    let e = Entity::new_with_attr_partial_value(
        u.clone(),
        [
            (model::SERVICE_SPIFFE_ID.into(), s(&p.spiffe_id)),
            (model::SERVICE_TRUST_DOMAIN.into(), s(&p.trust_domain)),
            (model::SERVICE_NAMESPACE.into(), s(&p.namespace)),
            (model::SERVICE_ACCOUNT.into(), s(&p.service_account)),
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

/// The request's principal type and the attributes guards read, without building anything:
/// the same choice as [`principal`].
pub(super) fn principal_facts(ids: &Identities) -> (PrincipalKind, PrincipalFacts<'_>) {
    match ids.principal() {
        PrincipalRef::User(jwt) => (PrincipalKind::User, PrincipalFacts::User { issuer: &jwt.issuer }),
        PrincipalRef::ApiClient(_) => (PrincipalKind::ApiClient, PrincipalFacts::None),
        // `principal` falls back to `Anonymous` without a peer entity, which is there exactly
        // when a peer was proven.
        PrincipalRef::Service(p) if ids.peer.is_some() => (
            PrincipalKind::Service,
            PrincipalFacts::Service {
                spiffe_id: &p.spiffe_id,
                trust_domain: &p.trust_domain,
                namespace: &p.namespace,
                service_account: &p.service_account,
            },
        ),
        PrincipalRef::Service(_) | PrincipalRef::Anonymous => (PrincipalKind::Anonymous, PrincipalFacts::None),
    }
}

/// The request's principal: exactly one, the strongest proven identity (User > ApiClient >
/// Service > Anonymous). Its entity goes into `extra` unless it is the peer's, already there.
pub(super) fn principal(
    t: &Types,
    ids: &Identities,
    peer: Option<&EntityUID>,
    base: &CoreEntities,
    extra: &mut Vec<Arc<Entity>>,
) -> EntityUID {
    let anonymous = |extra: &mut Vec<Arc<Entity>>| {
        let u = uid(&t.anonymous, model::ANONYMOUS_ID);
        extra.push(Arc::new(Entity::new_with_attr_partial_value(u.clone(), [], HashSet::new(), HashSet::new(), [])));
        u
    };
    // The precedence itself is authn's one rule (`Identities::principal`).
    match ids.principal() {
        PrincipalRef::User(jwt) => {
            let u = uid(&t.user, &jwt.subject);
            let (indirect, parents) = group_ancestry(t, &jwt.groups, base);
            let tags = jwt.claims.iter().map(|(k, v)| (k.as_str().into(), s(v)));
            let e = Entity::new_with_attr_partial_value(
                u.clone(),
                [
                    (model::USER_ISSUER.into(), s(&jwt.issuer)),
                    (model::USER_SCOPES.into(), string_set(&jwt.scopes)),
                    (model::USER_AUDIENCES.into(), string_set(&jwt.audiences)),
                ],
                indirect,
                parents,
                tags,
            );
            extra.push(Arc::new(e));
            u
        }
        PrincipalRef::ApiClient(client) => {
            let u = uid(&t.api_client, &client.client);
            let (indirect, parents) = group_ancestry(t, &client.groups, base);
            extra.push(Arc::new(Entity::new_with_attr_partial_value(u.clone(), [], indirect, parents, [])));
            u
        }
        // The peer's entity is already built (it is also `context.peer`).
        PrincipalRef::Service(_) => match peer {
            Some(u) => u.clone(),
            None => anonymous(extra),
        },
        PrincipalRef::Anonymous => anonymous(extra),
    }
}

/// The tag name of a route fact: a reserved prefix no header name can produce.
fn route_fact_tag(f: &RouteFact<'_>) -> String {
    match f.source {
        RouteFactSource::Extension => format!("{}{}", model::ROUTE_TAG_EXTENSION, f.key),
        RouteFactSource::Metadata(ns) => format!("{}{ns}:{}", model::ROUTE_TAG_METADATA, f.key),
        RouteFactSource::RouteMetadata(ns) => format!("{}{ns}:{}", model::ROUTE_TAG_ROUTE_METADATA, f.key),
    }
}

/// The `Route` entity for the request (into `extra`), tagged with the mapped headers and the
/// route facts Envoy sent.
pub(super) fn route(
    t: &Types,
    req: &RequestView<'_>,
    service: &str,
    mapping: &CedarMapping,
    extra: &mut Vec<Arc<Entity>>,
) -> EntityUID {
    let resource = uid(&t.route, &format!("{}{}", req.host, req.path));
    // All copies of a header, joined: a policy must not match on the first copy of a header
    // whose second copy the upstream may read.
    let route_tags =
        mapping.context_headers.iter().filter_map(|h| req.header_joined(h).map(|v| (h.as_str().into(), s(&v))));
    let fact_tags = req.route_facts.iter().map(|f| (route_fact_tag(f).into(), s(f.value)));
    let route_tags = route_tags.chain(fact_tags);
    extra.push(Arc::new(Entity::new_with_attr_partial_value(
        resource.clone(),
        [
            (model::ROUTE_HOST.into(), s(&req.host)),
            (model::ROUTE_PATH.into(), s(&req.path)),
            (model::ROUTE_SERVICE.into(), s(service)),
        ],
        HashSet::new(),
        HashSet::new(),
        route_tags,
    )));
    resource
}
