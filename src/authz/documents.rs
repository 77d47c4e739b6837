//! Policy documents (schema, policies, static entities) as sources hand them over, and their
//! parsing and strict validation. Every problem is reported with file and position; nothing
//! partial is ever returned.
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;

use cedar_policy::{Entities, Policy, PolicyId, PolicySet, Schema, SchemaFragment, ValidationMode, Validator};
use miette::Diagnostic;

/// What a document holds, from its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DocKind {
    Schema,
    Entities,
    Policies,
}

impl DocKind {
    /// `*.cedarschema`, `*.entities.json`, `*.cedar`; anything else is not a policy document.
    pub fn from_name(name: &str) -> Option<Self> {
        if name.ends_with(".cedarschema") {
            Some(DocKind::Schema)
        } else if name.ends_with(".entities.json") {
            Some(DocKind::Entities)
        } else if name.ends_with(".cedar") {
            Some(DocKind::Policies)
        } else {
            None
        }
    }
}

/// One input file or ConfigMap key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyDocument {
    /// Where it came from, as shown in errors and policy ids: `policies.cedar`,
    /// `configmap/ns/name/key.cedar`.
    pub origin: String,
    pub kind: DocKind,
    pub text: String,
}

/// One problem with a document, with a 1-based position when Cedar gave one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    pub origin: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}:{}: {}", self.origin, self.line, self.column, self.message)
        } else {
            write!(f, "{}: {}", self.origin, self.message)
        }
    }
}

impl LoadError {
    pub fn whole(origin: &str, message: impl Into<String>) -> Self {
        Self { origin: origin.to_owned(), line: 0, column: 0, message: message.into() }
    }

    fn at(origin: &str, text: &str, d: &dyn Diagnostic, message: String) -> Self {
        let offset = d.labels().and_then(|mut l| l.next()).map(|l| l.offset());
        let (line, column) = offset.map(|o| line_col(text, o)).unwrap_or((0, 0));
        let message = match d.help() {
            Some(h) => format!("{message} (help: {h})"),
            None => message,
        };
        Self { origin: origin.to_owned(), line, column, message }
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text.as_bytes()[..offset.min(text.len())];
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let col = before.iter().rev().take_while(|b| **b != b'\n').count() + 1;
    (line, col)
}

/// Formats a list of load errors one per line.
pub fn format_errors(errs: &[LoadError]) -> String {
    errs.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")
}

/// Entity types the schema declares as enumerations (`entity Color enum ["red"]`), as
/// `Type` or `Namespace::Type`.
fn enum_entity_types(fragments: &[SchemaFragment]) -> HashSet<String> {
    let mut out = HashSet::new();
    for frag in fragments {
        let Ok(json) = frag.clone().to_json_value() else { continue };
        let Some(namespaces) = json.as_object() else { continue };
        for (ns, body) in namespaces {
            let Some(types) = body.get("entityTypes").and_then(|t| t.as_object()) else { continue };
            for (name, def) in types {
                if def.get("enum").is_some() {
                    out.insert(if ns.is_empty() { name.clone() } else { format!("{ns}::{name}") });
                }
            }
        }
    }
    out
}

/// A document set that parsed and strictly validated.
pub(super) struct Validated {
    pub(super) policies: PolicySet,
    pub(super) schema: Schema,
    pub(super) entities: Entities,
    /// The schema's enumerated entity types (`Type` or `Namespace::Type`).
    pub(super) enum_types: HashSet<String>,
    /// Policy id → the document it came from.
    pub(super) origins: HashMap<String, String>,
    /// Schema validation warnings (not fatal).
    pub(super) warnings: Vec<String>,
}

/// Parses and strictly validates a whole document set.
pub(super) fn validate(docs: &[PolicyDocument], source: &str) -> Result<Validated, Vec<LoadError>> {
    let mut docs: Vec<&PolicyDocument> = docs.iter().collect();
    docs.sort_by(|a, b| (a.kind, &a.origin).cmp(&(b.kind, &b.origin)));
    let mut errors = Vec::new();

    // Schema: one or more fragments.
    let mut fragments = Vec::new();
    for d in docs.iter().filter(|d| d.kind == DocKind::Schema) {
        match SchemaFragment::from_cedarschema_str(&d.text) {
            Ok((frag, _warnings)) => fragments.push(frag),
            Err(e) => errors.push(LoadError::at(&d.origin, &d.text, &e, e.to_string())),
        }
    }
    if fragments.is_empty() && errors.is_empty() {
        errors
            .push(LoadError::whole(source, "no schema (*.cedarschema) found; policies are always validated strictly"));
    }
    let enum_types = enum_entity_types(&fragments);
    let schema = match Schema::from_schema_fragments(fragments) {
        Ok(s) => Some(s),
        Err(e) if errors.is_empty() => {
            errors.push(LoadError::whole(source, format!("schema: {e}")));
            None
        }
        Err(_) => None,
    };

    // Policies: ids from `@id("...")`, else `<origin>#<index>`.
    let mut policies = PolicySet::new();
    let mut origins = HashMap::new();
    let mut texts: HashMap<String, (&str, &str)> = HashMap::new();
    let mut seen_ids = HashSet::new();
    for d in docs.iter().filter(|d| d.kind == DocKind::Policies) {
        let set = match PolicySet::from_str(&d.text) {
            Ok(s) => s,
            Err(e) => {
                for pe in e.iter() {
                    errors.push(LoadError::at(&d.origin, &d.text, pe, pe.to_string()));
                }
                continue;
            }
        };
        if set.templates().next().is_some() {
            errors.push(LoadError::whole(&d.origin, "policy templates are not supported"));
            continue;
        }
        let mut parsed: Vec<&Policy> = set.policies().collect();
        // Parser ids are `policy0`, `policy1`, … in source order.
        parsed.sort_by_key(|p| p.id().to_string().trim_start_matches("policy").parse::<usize>().unwrap_or(usize::MAX));
        for (i, p) in parsed.into_iter().enumerate() {
            let id = match p.annotation("id") {
                Some(a) => a.to_owned(),
                None => format!("{}#{}", d.origin, i),
            };
            if !seen_ids.insert(id.clone()) {
                errors.push(LoadError::whole(&d.origin, format!("duplicate policy id `{id}`")));
                continue;
            }
            let renamed = p.new_id(PolicyId::new(&id));
            if let Err(e) = policies.add(renamed) {
                errors.push(LoadError::whole(&d.origin, e.to_string()));
                continue;
            }
            origins.insert(id.clone(), d.origin.clone());
            texts.insert(id, (d.origin.as_str(), d.text.as_str()));
        }
    }

    let mut warnings = Vec::new();
    if let Some(schema) = &schema {
        let result = Validator::new(schema.clone()).validate(&policies, ValidationMode::Strict);
        for e in result.validation_errors() {
            let id = e.policy_id().to_string();
            let (origin, text) = texts.get(&id).copied().unwrap_or((source, ""));
            errors.push(LoadError::at(origin, text, e, format!("policy `{id}`: {e}")));
        }
        for w in result.validation_warnings() {
            warnings.push(w.to_string());
        }
    }

    // Entities: the schema's actions plus every *.entities.json, checked against the schema.
    let mut entities = None;
    if let Some(schema) = &schema {
        let mut all = Vec::new();
        for d in docs.iter().filter(|d| d.kind == DocKind::Entities) {
            match Entities::from_json_str(&d.text, Some(schema)) {
                Ok(es) => all.extend(es.iter().cloned()),
                Err(e) => errors.push(LoadError::at(&d.origin, &d.text, &e, e.to_string())),
            }
        }
        let combined = match schema.action_entities() {
            Ok(actions) => actions.add_entities(all, Some(schema)),
            Err(e) => Err(e),
        };
        match combined {
            Ok(es) => entities = Some(es),
            Err(e) => errors.push(LoadError::whole(source, format!("entities: {e}"))),
        }
    }

    if !errors.is_empty() {
        return Err(errors);
    }
    let (Some(schema), Some(entities)) = (schema, entities) else {
        return Err(vec![LoadError::whole(source, "incomplete policy set")]);
    };
    Ok(Validated { policies, schema, entities, enum_types, origins, warnings })
}
