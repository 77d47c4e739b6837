//! `portcullis check --explain`: what Cedar saw and did, for people (never for logs).

pub(super) fn print_explanation(e: Option<Result<crate::authz::Explanation, crate::authz::AuthzError>>) {
    let list = |v: &[String]| if v.is_empty() { "-".to_owned() } else { v.join(", ") };
    say!("explain:");
    match e {
        None => say!("  Cedar was not asked (the request was decided before authorization)"),
        Some(Err(e)) => say!("  Cedar could not evaluate the request: {e}"),
        Some(Ok(x)) => {
            say!("  principal:   {}", x.principal);
            say!("  action:      {}", x.action);
            say!("  resource:    {}", x.resource);
            say!("  context:     {}", x.context);
            for en in &x.entities {
                say!("  entity:      {en}");
            }
            say!("  considered:  {} of {} policies: {}", x.considered.len(), x.total, list(&x.considered));
            say!("  satisfied:   {}", list(&x.satisfied));
            say!("  determining: {}", list(&x.determining));
            if x.errors.is_empty() {
                say!("  errors:      -");
            }
            for (id, msg) in &x.errors {
                say!("  error:       {id}: {msg}");
            }
            say!("  cedar:       {}", if x.allowed { "allow" } else { "deny" });
        }
    }
}
