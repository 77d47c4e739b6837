//! The Cedar model portcullis evaluates against: the one place that names its entity types,
//! their attributes, the context keys and the actions. The entity builder, the context builder
//! and the index read these names; a test checks that the shipped `.cedarschema` declares
//! exactly them, so the schema, the docs and the code agree by construction.
use std::sync::LazyLock;

use cedar_policy::EntityTypeName;
use cedar_policy_core::ast::EntityType;

use super::AuthzError;

/// Groups, from a token's `groups`/`roles` claims or an API client's configured groups.
pub const GROUP: &str = "Group";
/// A verified JWT: `User::"<sub>"`; claims are its tags.
pub const USER: &str = "User";
/// An mTLS peer: `Service::"<spiffe id>"`.
pub const SERVICE: &str = "Service";
/// A client proven by an API key: `ApiClient::"<client>"`.
pub const API_CLIENT: &str = "ApiClient";
/// A caller with no credential: `Anonymous::"anonymous"`.
pub const ANONYMOUS: &str = "Anonymous";
/// The one id of the [`ANONYMOUS`] principal.
pub const ANONYMOUS_ID: &str = "anonymous";
/// The route being called: `Route::"<host><path>"`; its tags are the mapped request headers.
pub const ROUTE: &str = "Route";
/// Actions are `Action::"<HTTP method>"`.
pub const ACTION: &str = "Action";

/// `User` attributes. `scopes` (OAuth `scope`/`scp`) and `audiences` (`aud`) are always
/// present, empty when the token has none, so policies need no `has`.
pub const USER_ISSUER: &str = "issuer";
pub const USER_SCOPES: &str = "scopes";
pub const USER_AUDIENCES: &str = "audiences";
/// `Service` attributes.
pub const SERVICE_SPIFFE_ID: &str = "spiffe_id";
pub const SERVICE_TRUST_DOMAIN: &str = "trust_domain";
pub const SERVICE_NAMESPACE: &str = "namespace";
pub const SERVICE_ACCOUNT: &str = "service_account";
/// `Route` attributes (`service` is the first label of the host).
pub const ROUTE_HOST: &str = "host";
pub const ROUTE_PATH: &str = "path";
pub const ROUTE_SERVICE: &str = "service";

/// `Route` tag prefixes for what Envoy reports about the route. A header name never contains
/// `:` (`cedar.context_headers` are `[A-Za-z0-9_-]`), so no request header can produce these.
/// `ext:<key>` is a per-route context extension.
pub const ROUTE_TAG_EXTENSION: &str = "ext:";
/// `metadata:<namespace>:<key>`: a string field of dynamic metadata (`metadata_context`).
pub const ROUTE_TAG_METADATA: &str = "metadata:";
/// `route_metadata:<namespace>:<key>`: a string field of the route's metadata.
pub const ROUTE_TAG_ROUTE_METADATA: &str = "route_metadata:";

/// Every entity type of the model with its attributes, and whether it carries string tags.
pub const ENTITY_TYPES: [(&str, &[&str], bool); 6] = [
    (GROUP, &[], false),
    (USER, &[USER_ISSUER, USER_SCOPES, USER_AUDIENCES], true),
    (SERVICE, &[SERVICE_SPIFFE_ID, SERVICE_TRUST_DOMAIN, SERVICE_NAMESPACE, SERVICE_ACCOUNT], false),
    (API_CLIENT, &[], false),
    (ANONYMOUS, &[], false),
    (ROUTE, &[ROUTE_HOST, ROUTE_PATH, ROUTE_SERVICE], true),
];

/// Context keys. `source_ip` and `peer` are present only when known.
pub const CTX_METHOD: &str = "method";
pub const CTX_PATH: &str = "path";
pub const CTX_QUERY: &str = "query";
pub const CTX_HOST: &str = "host";
pub const CTX_SCHEME: &str = "scheme";
pub const CTX_REQUEST_ID: &str = "request_id";
/// The authentication methods that succeeded (`jwt`, `mtls`, `api_key`).
pub const CTX_AUTHN: &str = "authn";
/// Seconds since the Unix epoch.
pub const CTX_TIME: &str = "time";
pub const CTX_SOURCE_IP: &str = "source_ip";
/// The mTLS peer's `Service`, also when the principal is a user calling through it.
pub const CTX_PEER: &str = "peer";
/// `<package.Service>` and `<Method>` of a gRPC call (`POST /<package.Service>/<Method>` with an
/// `application/grpc…` content type). Set only when the schema declares them for the action,
/// so a schema written before them still fits every request.
pub const CTX_GRPC_SERVICE: &str = "grpc_service";
pub const CTX_GRPC_METHOD: &str = "grpc_method";
/// The parsed JSON request body. Not in the shipped schema (and so never parsed by default): an
/// operator declares it, with its type, for the actions whose policies read it.
pub const CTX_BODY: &str = "body";

/// Every context key of the shipped schema, and whether it is optional.
pub const CONTEXT_KEYS: [(&str, bool); 12] = [
    (CTX_METHOD, false),
    (CTX_PATH, false),
    (CTX_QUERY, false),
    (CTX_HOST, false),
    (CTX_SCHEME, false),
    (CTX_REQUEST_ID, false),
    (CTX_AUTHN, false),
    (CTX_TIME, false),
    (CTX_SOURCE_IP, true),
    (CTX_PEER, true),
    (CTX_GRPC_SERVICE, true),
    (CTX_GRPC_METHOD, true),
];

/// The Cedar extension function that builds `context.source_ip`.
pub const IP_EXTENSION: &str = "ip";

/// Action groups and their member actions (the HTTP methods the shipped schema declares).
pub const ACTION_GROUPS: [(&str, &[&str]); 2] =
    [("read", &["GET", "HEAD", "OPTIONS"]), ("write", &["POST", "PUT", "PATCH", "DELETE"])];

/// The principal types authorization builds, one index slice each per action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrincipalKind {
    User,
    Service,
    ApiClient,
    Anonymous,
}

impl PrincipalKind {
    pub const ALL: [PrincipalKind; 4] =
        [PrincipalKind::User, PrincipalKind::Service, PrincipalKind::ApiClient, PrincipalKind::Anonymous];

    pub(super) fn slot(self) -> usize {
        self as usize
    }

    /// The entity type name of this kind of principal.
    pub fn type_name(self) -> &'static str {
        match self {
            PrincipalKind::User => USER,
            PrincipalKind::Service => SERVICE,
            PrincipalKind::ApiClient => API_CLIENT,
            PrincipalKind::Anonymous => ANONYMOUS,
        }
    }
}

/// The entity type names of the model, parsed once: parsing a name runs Cedar's full parser,
/// which cost more than the rest of building a request's entities.
pub(super) struct Types {
    pub(super) user: EntityType,
    pub(super) group: EntityType,
    pub(super) service: EntityType,
    pub(super) api_client: EntityType,
    pub(super) anonymous: EntityType,
    pub(super) action: EntityType,
    pub(super) route: EntityType,
}

static TYPES: LazyLock<Result<Types, String>> = LazyLock::new(|| {
    let t = |name: &str| EntityType::from_normalized_str(name).map_err(|e| format!("entity type {name}: {e}"));
    Ok(Types {
        user: t(USER)?,
        group: t(GROUP)?,
        service: t(SERVICE)?,
        api_client: t(API_CLIENT)?,
        anonymous: t(ANONYMOUS)?,
        action: t(ACTION)?,
        route: t(ROUTE)?,
    })
});

impl Types {
    pub(super) fn of(&self, kind: PrincipalKind) -> &EntityType {
        match kind {
            PrincipalKind::User => &self.user,
            PrincipalKind::Service => &self.service,
            PrincipalKind::ApiClient => &self.api_client,
            PrincipalKind::Anonymous => &self.anonymous,
        }
    }

    /// The types built per request (never only static).
    pub(super) fn per_request(&self) -> [&EntityType; 5] {
        [&self.user, &self.service, &self.api_client, &self.anonymous, &self.route]
    }
}

pub(super) fn types() -> Result<&'static Types, AuthzError> {
    TYPES.as_ref().map_err(|e| AuthzError::Entity(e.clone()))
}

/// An entity type as the public API names it (at load only: this runs Cedar's parser).
pub(super) fn public(ty: &EntityType) -> Result<EntityTypeName, AuthzError> {
    ty.to_string().parse().map_err(|e| AuthzError::Entity(format!("entity type {ty}: {e}")))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use cedar_policy::SchemaFragment;
    use serde_json::Value;

    use super::*;

    const SHIPPED: &str = include_str!("../../charts/portcullis/policies/portcullis.cedarschema");

    fn names<'a>(v: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
        v.into_iter().map(str::to_owned).collect()
    }

    /// A record type's attributes as (name, required), resolving a common-type reference.
    fn record(ty: &Value, common: &Value) -> Option<BTreeSet<(String, bool)>> {
        let ty = match ty.get("attributes") {
            Some(_) => ty,
            // A reference: `{"type": "Name"}`, or `{"type": "EntityOrCommon", "name": "Name"}`.
            None => common.get(ty.get("name").or_else(|| ty.get("type"))?.as_str()?)?,
        };
        let attrs = ty.get("attributes")?.as_object()?;
        Some(
            attrs
                .iter()
                .map(|(k, a)| (k.clone(), a.get("required").and_then(Value::as_bool).unwrap_or(true)))
                .collect(),
        )
    }

    /// Every way a schema text differs from the model (empty when they agree).
    fn drift(schema: &str) -> Vec<String> {
        let mut out = Vec::new();
        let fragment = match SchemaFragment::from_cedarschema_str(schema) {
            Ok((f, _warnings)) => f,
            Err(e) => return vec![format!("parse: {e}")],
        };
        let json = match fragment.to_json_value() {
            Ok(j) => j,
            Err(e) => return vec![format!("to json: {e}")],
        };
        let ns = &json[""];
        let (types, actions, common) = (&ns["entityTypes"], &ns["actions"], &ns["commonTypes"]);

        let declared: BTreeSet<String> = types.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default();
        let wanted = names(ENTITY_TYPES.iter().map(|(n, _, _)| *n));
        if declared != wanted {
            out.push(format!("entity types: schema {declared:?}, model {wanted:?}"));
        }
        for (name, attrs, tagged) in ENTITY_TYPES {
            let def = &types[name];
            let got = def.get("shape").map(|s| record(s, common).unwrap_or_default()).unwrap_or_default();
            let want: BTreeSet<(String, bool)> = attrs.iter().map(|a| ((*a).to_owned(), true)).collect();
            if got != want {
                out.push(format!("{name} attributes: schema {got:?}, model {want:?}"));
            }
            if def.get("tags").is_some() != tagged {
                out.push(format!("{name} tags: schema {}, model {tagged}", def.get("tags").is_some()));
            }
        }

        let context: BTreeSet<(String, bool)> = CONTEXT_KEYS.iter().map(|(k, opt)| ((*k).to_owned(), !opt)).collect();
        let principals = names(PrincipalKind::ALL.map(PrincipalKind::type_name));
        let declared: BTreeSet<String> = actions.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default();
        let wanted =
            names(ACTION_GROUPS.iter().flat_map(|(g, members)| std::iter::once(*g).chain(members.iter().copied())));
        if declared != wanted {
            out.push(format!("actions: schema {declared:?}, model {wanted:?}"));
        }
        for (group, members) in ACTION_GROUPS {
            for m in members {
                let a = &actions[m];
                let parents: BTreeSet<String> = a["memberOf"]
                    .as_array()
                    .map(|ps| ps.iter().filter_map(|p| p["id"].as_str().map(str::to_owned)).collect())
                    .unwrap_or_default();
                if parents != names([group]) {
                    out.push(format!("action {m}: member of {parents:?}, model {group}"));
                }
                let applies = &a["appliesTo"];
                let list = |k: &str| -> BTreeSet<String> {
                    applies[k]
                        .as_array()
                        .map(|v| v.iter().filter_map(|t| t.as_str().map(str::to_owned)).collect())
                        .unwrap_or_default()
                };
                if list("principalTypes") != principals {
                    out.push(format!("action {m} principals: {:?}", list("principalTypes")));
                }
                if list("resourceTypes") != names([ROUTE]) {
                    out.push(format!("action {m} resources: {:?}", list("resourceTypes")));
                }
                let got = record(&applies["context"], common).unwrap_or_default();
                if got != context {
                    out.push(format!("action {m} context: schema {got:?}, model {context:?}"));
                }
            }
        }
        out
    }

    #[test]
    fn the_shipped_schema_declares_exactly_the_model() {
        assert_eq!(drift(SHIPPED), Vec::<String>::new());
        // The three shipped copies are one schema.
        assert_eq!(SHIPPED, include_str!("../../deploy/kustomize/base/policies/portcullis.cedarschema"));
        assert_eq!(SHIPPED, include_str!("../../examples/demo/policies/portcullis.cedarschema"));
    }

    #[test]
    fn a_schema_that_drifts_from_the_model_is_caught() {
        let changed = |from: &str, to: &str| {
            assert!(SHIPPED.contains(from), "the shipped schema has no `{from}`");
            drift(&SHIPPED.replace(from, to))
        };
        for (from, to) in [
            ("  issuer: String,", "  iss: String,"),
            ("  scopes: Set<String>,\n", ""),
            ("  audiences: Set<String>,", "  audiences?: Set<String>,"),
            ("  service: String,\n", ""),
            ("  request_id: String,", "  request_id: String,\n  tenant: String,"),
            ("source_ip?: ipaddr", "source_ip: ipaddr"),
            ("entity Anonymous;", "entity Anonymous;\nentity Robot;"),
            ("} tags String;\n\ntype", "};\n\ntype"),
            (r#""GET", "HEAD", "OPTIONS""#, r#""GET", "HEAD""#),
            (r#""POST", "PUT", "PATCH", "DELETE" in ["write"]"#, r#""POST", "PUT", "PATCH", "DELETE" in ["read"]"#),
            (
                "principal: [User, Service, ApiClient, Anonymous],\n  resource: [Route],\n  context: RequestContext,\n};\n\naction \"POST\"",
                "principal: [User, Service, ApiClient],\n  resource: [Route],\n  context: RequestContext,\n};\n\naction \"POST\"",
            ),
        ] {
            assert!(!changed(from, to).is_empty(), "`{from}` → `{to}` went unnoticed");
        }
    }
}
