//! The guard compiler: reads the leading conjuncts of a policy's condition that compare a
//! request attribute we always set with a string literal, so the index can leave out a policy
//! whose guard is certainly false for a request (see `index` for why that is exact).
use serde_json::Value;

use super::memo::Reads;
use super::model::{self, PrincipalKind};

/// The request values guards read: the same strings authorization puts into the Cedar request.
#[derive(Debug, Clone, Copy)]
pub(super) struct Facts<'a> {
    pub route_host: &'a str,
    pub route_path: &'a str,
    pub route_service: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub host: &'a str,
    pub scheme: &'a str,
    pub request_id: &'a str,
    pub principal: PrincipalFacts<'a>,
}

/// The principal's attributes, when its type has any.
#[derive(Debug, Clone, Copy)]
pub(super) enum PrincipalFacts<'a> {
    User { issuer: &'a str },
    Service { spiffe_id: &'a str, trust_domain: &'a str, namespace: &'a str, service_account: &'a str },
    None,
}

/// A request attribute that is set on every request of a slice, always as a string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Field {
    RouteHost,
    RoutePath,
    RouteService,
    Method,
    Path,
    Query,
    Host,
    Scheme,
    RequestId,
    Issuer,
    SpiffeId,
    TrustDomain,
    Namespace,
    ServiceAccount,
}

impl Field {
    /// `var.attr`, if it is always a string for this principal kind.
    fn of(var: &str, attr: &str, principal: PrincipalKind) -> Option<Field> {
        Some(match (var, attr, principal) {
            ("resource", model::ROUTE_HOST, _) => Field::RouteHost,
            ("resource", model::ROUTE_PATH, _) => Field::RoutePath,
            ("resource", model::ROUTE_SERVICE, _) => Field::RouteService,
            ("context", model::CTX_METHOD, _) => Field::Method,
            ("context", model::CTX_PATH, _) => Field::Path,
            ("context", model::CTX_QUERY, _) => Field::Query,
            ("context", model::CTX_HOST, _) => Field::Host,
            ("context", model::CTX_SCHEME, _) => Field::Scheme,
            ("context", model::CTX_REQUEST_ID, _) => Field::RequestId,
            ("principal", model::USER_ISSUER, PrincipalKind::User) => Field::Issuer,
            ("principal", model::SERVICE_SPIFFE_ID, PrincipalKind::Service) => Field::SpiffeId,
            ("principal", model::SERVICE_TRUST_DOMAIN, PrincipalKind::Service) => Field::TrustDomain,
            ("principal", model::SERVICE_NAMESPACE, PrincipalKind::Service) => Field::Namespace,
            ("principal", model::SERVICE_ACCOUNT, PrincipalKind::Service) => Field::ServiceAccount,
            _ => return None,
        })
    }

    /// What a decision memo key must hold, beyond what every key holds, to fix this field's
    /// value. Every key holds the action (`method`), the host and path (which also fix the
    /// `Route`'s `host`, `path` and `service`, derived from the host) and every proven identity in
    /// full (a user's `issuer`; the peer, which is the `Service` principal, with all its fields).
    /// No wildcard: a new field must say here how it is keyed.
    pub(super) fn reads(self) -> Reads {
        match self {
            Field::RouteHost
            | Field::RoutePath
            | Field::RouteService
            | Field::Method
            | Field::Path
            | Field::Host
            | Field::Issuer
            | Field::SpiffeId
            | Field::TrustDomain
            | Field::Namespace
            | Field::ServiceAccount => Reads::NONE,
            Field::Query => Reads::QUERY,
            Field::Scheme => Reads::SCHEME,
            Field::RequestId => Reads::REQUEST_ID,
        }
    }

    fn read<'a>(self, f: &Facts<'a>) -> Option<&'a str> {
        Some(match (self, f.principal) {
            (Field::RouteHost, _) => f.route_host,
            (Field::RoutePath, _) => f.route_path,
            (Field::RouteService, _) => f.route_service,
            (Field::Method, _) => f.method,
            (Field::Path, _) => f.path,
            (Field::Query, _) => f.query,
            (Field::Host, _) => f.host,
            (Field::Scheme, _) => f.scheme,
            (Field::RequestId, _) => f.request_id,
            (Field::Issuer, PrincipalFacts::User { issuer }) => issuer,
            (Field::SpiffeId, PrincipalFacts::Service { spiffe_id, .. }) => spiffe_id,
            (Field::TrustDomain, PrincipalFacts::Service { trust_domain, .. }) => trust_domain,
            (Field::Namespace, PrincipalFacts::Service { namespace, .. }) => namespace,
            (Field::ServiceAccount, PrincipalFacts::Service { service_account, .. }) => service_account,
            _ => return None,
        })
    }
}

/// Cedar's `like`: `*` matches any run of characters, everything else itself. Kept as the
/// literal runs between wildcards (one run means no wildcard).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Glob {
    runs: Vec<String>,
}

impl Glob {
    fn matches(&self, text: &str) -> bool {
        let (first, last) = match (self.runs.first(), self.runs.last()) {
            (Some(f), Some(l)) => (f.as_str(), l.as_str()),
            _ => return text.is_empty(),
        };
        if self.runs.len() == 1 {
            return text == first;
        }
        if text.len() < first.len() + last.len() || !text.starts_with(first) || !text.ends_with(last) {
            return false;
        }
        // Runs are whole characters, so the byte offsets below are character boundaries, and
        // matching bytes is matching characters (UTF-8 cannot match inside a character).
        let mut rest = &text[first.len()..text.len() - last.len()];
        for run in &self.runs[1..self.runs.len() - 1] {
            match rest.find(run.as_str()) {
                // The leftmost occurrence leaves the most room for the runs after it.
                Some(at) => rest = &rest[at + run.len()..],
                None => return false,
            }
        }
        true
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Test {
    Eq(String),
    Like(Glob),
}

/// One leading conjunct: `field == "lit"` or `field like "pat"`, possibly negated.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Atom {
    field: Field,
    test: Test,
    negated: bool,
}

impl Atom {
    /// `None` when the value is not known for this request: the policy is then kept.
    fn holds(&self, facts: &Facts<'_>) -> Option<bool> {
        let v = self.field.read(facts)?;
        let r = match &self.test {
            Test::Eq(lit) => v == lit,
            Test::Like(g) => g.matches(v),
        };
        Some(r != self.negated)
    }
}

/// The leading conjuncts of a policy's condition that the index can evaluate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Guard(Vec<Atom>);

impl Guard {
    /// False only when Cedar would certainly find the policy's condition false, without error.
    pub(super) fn may_hold(&self, facts: &Facts<'_>) -> bool {
        self.0.iter().all(|a| a.holds(facts).unwrap_or(true))
    }

    /// What a decision memo key must hold to fix every value this guard reads.
    pub(super) fn reads(&self) -> Reads {
        self.0.iter().fold(Reads::NONE, |r, a| r.union(a.field.reads()))
    }

    /// From the policy's JSON form: its conditions (`when` bodies and negated `unless` bodies)
    /// flattened along `&&` in evaluation order, and the atoms up to the first one not
    /// understood. `None` when there is no such atom.
    pub(super) fn of(json: &Value, principal: PrincipalKind) -> Option<Guard> {
        let mut conjuncts: Vec<(&Value, bool)> = Vec::new();
        for cond in json.get("conditions")?.as_array()? {
            let body = cond.get("body")?;
            match cond.get("kind")?.as_str()? {
                "when" => flatten(body, &mut conjuncts),
                // `unless { e }` is `!e`: one conjunct, whatever `e` is.
                "unless" => conjuncts.push((body, true)),
                _ => return None,
            }
        }
        let mut atoms = Vec::new();
        for (expr, negated) in conjuncts {
            match atom(expr, negated, principal) {
                Some(a) => atoms.push(a),
                None => break,
            }
        }
        (!atoms.is_empty()).then_some(Guard(atoms))
    }
}

/// `a && b && …` in the order Cedar evaluates it (left first, whatever the nesting).
fn flatten<'a>(e: &'a Value, out: &mut Vec<(&'a Value, bool)>) {
    match e.get("&&") {
        Some(and) => match (and.get("left"), and.get("right")) {
            (Some(l), Some(r)) => {
                flatten(l, out);
                flatten(r, out);
            }
            _ => out.push((e, false)),
        },
        None => out.push((e, false)),
    }
}

fn atom(e: &Value, negated: bool, principal: PrincipalKind) -> Option<Atom> {
    if let Some(not) = e.get("!") {
        return atom(not.get("arg")?, !negated, principal);
    }
    if let Some(eq) = e.get("==") {
        let (l, r) = (eq.get("left")?, eq.get("right")?);
        let (field, lit) = match (attribute(l, principal), attribute(r, principal)) {
            (Some(f), None) => (f, r),
            (None, Some(f)) => (f, l),
            _ => return None,
        };
        let lit = lit.get("Value")?.as_str()?;
        return Some(Atom { field, test: Test::Eq(lit.to_owned()), negated });
    }
    if let Some(like) = e.get("like") {
        let field = attribute(like.get("left")?, principal)?;
        let mut runs = vec![String::new()];
        for elem in like.get("pattern")?.as_array()? {
            match elem {
                Value::String(w) if w == "Wildcard" => runs.push(String::new()),
                Value::Object(o) => runs.last_mut()?.push_str(o.get("Literal")?.as_str()?),
                _ => return None,
            }
        }
        return Some(Atom { field, test: Test::Like(Glob { runs }), negated });
    }
    None
}

/// `principal.x`, `resource.x`, `context.x` for an always-present string attribute.
fn attribute(e: &Value, principal: PrincipalKind) -> Option<Field> {
    let get = e.get(".")?;
    let var = get.get("left")?.get("Var")?.as_str()?;
    Field::of(var, get.get("attr")?.as_str()?, principal)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    use cedar_policy::{Policy, PolicySet};

    fn glob(p: &str) -> Glob {
        let set =
            PolicySet::from_str(&format!("permit (principal, action, resource) when {{ context.path like \"{p}\" }};"))
                .expect("parses");
        let policy = set.policies().next().expect("one policy");
        match policy.to_json().ok().and_then(|j| Guard::of(&j, PrincipalKind::Anonymous)).map(|g| g.0) {
            Some(atoms) if atoms.len() == 1 => match &atoms[0].test {
                Test::Like(g) => g.clone(),
                t => panic!("not a like: {t:?}"),
            },
            g => panic!("no guard: {g:?}"),
        }
    }

    #[test]
    fn glob_follows_cedar_like() {
        let cases: &[(&str, &str, bool)] = &[
            ("/api/*", "/api/", true),
            ("/api/*", "/api", false),
            ("/api/*", "/api/x/y", true),
            ("*", "", true),
            ("", "", true),
            ("", "x", false),
            ("a*b*c", "abc", true),
            ("a*b*c", "ab", false),
            ("a*a", "a", false),
            ("a*a", "aa", true),
            ("*ab*ab", "xabyab", true),
            ("*ab*ab", "xab", false),
            (r"/lit\*", "/lit*", true),
            (r"/lit\*", "/litx", false),
            ("é*ö", "éxyö", true),
            ("é*ö", "é", false),
            ("**", "anything", true),
        ];
        for (p, t, want) in cases {
            assert_eq!(glob(p).matches(t), *want, "{p:?} like {t:?}");
        }
    }

    #[test]
    fn guards_stop_at_the_first_conjunct_not_understood() {
        let set = PolicySet::from_str(
            r#"
            permit (principal, action, resource)
            when { resource.host == "a" && principal.getTag("t") == "x" && resource.path like "/p*" };
            permit (principal, action, resource)
            when { "b" == context.method } unless { resource.path like "/admin*" };
            permit (principal, action, resource) when { principal.namespace == "ns" };
            permit (principal, action, resource) when { resource.hasTag("x") && resource.host == "a" };
            "#,
        )
        .expect("parses");
        let mut policies: Vec<&Policy> = set.policies().collect();
        policies.sort_by_key(|p| p.id().to_string());
        let fields = |p: &Policy, k| -> Vec<(Field, bool)> {
            let json = p.to_json().expect("json form");
            Guard::of(&json, k).map(|g| g.0.iter().map(|a| (a.field, a.negated)).collect()).unwrap_or_default()
        };
        assert_eq!(fields(policies[0], PrincipalKind::User), [(Field::RouteHost, false)]);
        assert_eq!(fields(policies[1], PrincipalKind::User), [(Field::Method, false), (Field::RoutePath, true)]);
        // `namespace` is an attribute of a Service only.
        assert_eq!(fields(policies[2], PrincipalKind::Service), [(Field::Namespace, false)]);
        assert!(fields(policies[2], PrincipalKind::User).is_empty());
        assert!(fields(policies[3], PrincipalKind::User).is_empty());
    }
}
