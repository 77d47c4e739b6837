//! A [`PolicySnapshot`] is an immutable, validated bundle: the compiled [`Engine`] (Cedar
//! policies, the schema they were strictly validated against, static entities plus the schema's
//! action entities) and its metadata, with a content version. Sources only produce
//! [`PolicyDocument`]s; building is source-agnostic.
use std::collections::HashMap;
use std::fmt;
use std::time::SystemTime;

use sha2::{Digest, Sha256};

use crate::authz::{Compiled, Engine};
pub use crate::authz::{DocKind, LoadError, PolicyDocument, format_errors};

/// The validated bundle every request evaluates against.
pub struct PolicySnapshot {
    /// Short content hash of every input: equal inputs give equal versions.
    /// `Arc`, so every check's audit record shares it instead of copying it.
    pub version: std::sync::Arc<str>,
    /// Human description of the source (`dir:/etc/portcullis/policies`).
    pub source: String,
    pub loaded_at: SystemTime,
    pub policy_count: usize,
    /// Policy id → the document it came from.
    pub origins: HashMap<String, String>,
    /// Schema validation warnings (not fatal).
    pub warnings: Vec<String>,
    /// The compiled policies requests are evaluated against.
    pub engine: Engine,
}

impl fmt::Debug for PolicySnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicySnapshot")
            .field("version", &self.version)
            .field("source", &self.source)
            .field("policy_count", &self.policy_count)
            .finish()
    }
}

/// Content hash of a document set, independent of order.
pub fn version_of(docs: &[PolicyDocument]) -> String {
    let mut sorted: Vec<&PolicyDocument> = docs.iter().collect();
    sorted.sort_by(|a, b| a.origin.cmp(&b.origin));
    let mut h = Sha256::new();
    for d in sorted {
        h.update(d.origin.as_bytes());
        h.update([0]);
        h.update(d.text.as_bytes());
        h.update([0]);
    }
    hex::encode(&h.finalize()[..6])
}

impl PolicySnapshot {
    /// Parses, strictly validates and compiles a whole document set. Every problem is reported,
    /// with file and position; nothing partial is ever returned.
    pub fn build(docs: &[PolicyDocument], source: &str) -> Result<Self, Vec<LoadError>> {
        let Compiled { engine, origins, warnings } = Engine::compile(docs, source)?;
        Ok(Self::with_engine(engine, docs, source, origins, warnings))
    }

    /// A snapshot with no policies (and an empty schema): Cedar denies every request.
    pub fn empty(docs: &[PolicyDocument], source: &str) -> Result<Self, Vec<LoadError>> {
        Ok(Self::with_engine(Engine::empty(source)?, docs, source, HashMap::new(), Vec::new()))
    }

    fn with_engine(
        engine: Engine,
        docs: &[PolicyDocument],
        source: &str,
        origins: HashMap<String, String>,
        warnings: Vec<String>,
    ) -> Self {
        PolicySnapshot {
            policy_count: engine.policy_count(),
            engine,
            version: version_of(docs).into(),
            source: source.to_owned(),
            loaded_at: SystemTime::now(),
            origins,
            warnings,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: &str = r#"
        entity User; entity Route;
        action "GET" appliesTo { principal: [User], resource: [Route] };
    "#;

    fn doc(origin: &str, text: &str) -> PolicyDocument {
        PolicyDocument { origin: origin.into(), kind: DocKind::from_name(origin).unwrap(), text: text.into() }
    }

    #[test]
    fn ids_come_from_annotations_or_origin_and_index() {
        let s = PolicySnapshot::build(
            &[
                doc("s.cedarschema", SCHEMA),
                doc(
                    "a.cedar",
                    "@id(\"named\") permit(principal, action, resource);\npermit(principal, action, resource);",
                ),
            ],
            "test",
        )
        .unwrap();
        assert!(s.origins.contains_key("named"));
        assert!(s.origins.contains_key("a.cedar#1"));
    }

    #[test]
    fn syntax_errors_name_file_line_and_column() {
        let errs = PolicySnapshot::build(
            &[
                doc("s.cedarschema", SCHEMA),
                doc("bad.cedar", "permit(principal, action, resource);\npermit(principal action);"),
            ],
            "test",
        )
        .unwrap_err();
        assert_eq!(errs[0].origin, "bad.cedar");
        assert_eq!(errs[0].line, 2, "{errs:?}");
    }

    #[test]
    fn policies_that_do_not_fit_the_schema_are_refused() {
        let errs = PolicySnapshot::build(
            &[
                doc("s.cedarschema", SCHEMA),
                doc("p.cedar", "permit(principal, action, resource) when { principal.nope == 1 };"),
            ],
            "test",
        )
        .unwrap_err();
        assert_eq!(errs[0].origin, "p.cedar");
        assert_eq!(errs[0].line, 1);
        assert!(errs[0].message.contains("p.cedar#0"), "{}", errs[0]);
    }

    #[test]
    fn a_schema_is_required() {
        let errs = PolicySnapshot::build(&[doc("p.cedar", "permit(principal, action, resource);")], "t").unwrap_err();
        assert!(errs[0].message.contains("no schema"));
    }

    #[test]
    fn duplicate_ids_are_refused() {
        let errs = PolicySnapshot::build(
            &[
                doc("s.cedarschema", SCHEMA),
                doc("a.cedar", "@id(\"x\") permit(principal, action, resource);"),
                doc("b.cedar", "@id(\"x\") forbid(principal, action, resource);"),
            ],
            "t",
        )
        .unwrap_err();
        assert!(errs[0].message.contains("duplicate policy id"));
    }

    #[test]
    fn version_depends_on_content_not_order() {
        let a = doc("a.cedar", "x");
        let b = doc("b.cedar", "y");
        assert_eq!(version_of(&[a.clone(), b.clone()]), version_of(&[b.clone(), a.clone()]));
        assert_ne!(version_of(&[a]), version_of(&[b]));
    }
}
