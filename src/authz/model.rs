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

/// `User` attributes.
pub const USER_ISSUER: &str = "issuer";
/// `Service` attributes.
pub const SERVICE_SPIFFE_ID: &str = "spiffe_id";
pub const SERVICE_TRUST_DOMAIN: &str = "trust_domain";
pub const SERVICE_NAMESPACE: &str = "namespace";
pub const SERVICE_ACCOUNT: &str = "service_account";
/// `Route` attributes (`service` is the first label of the host).
pub const ROUTE_HOST: &str = "host";
pub const ROUTE_PATH: &str = "path";
pub const ROUTE_SERVICE: &str = "service";

/// Every entity type of the model with its attributes, and whether it carries string tags.
pub const ENTITY_TYPES: [(&str, &[&str], bool); 6] = [
    (GROUP, &[], false),
    (USER, &[USER_ISSUER], true),
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

/// Every context key, and whether it is optional.
pub const CONTEXT_KEYS: [(&str, bool); 10] = [
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
