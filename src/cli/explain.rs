//! `portcullis check --explain`: what Cedar saw and did, for people (never for logs).

pub(super) fn print_explanation(e: Option<Result<crate::authz::Explanation, crate::authz::AuthzError>>) {
    let list = |v: &[String]| if v.is_empty() { "-".to_owned() } else { v.join(", ") };
    println!("explain:");
    match e {
        None => println!("  Cedar was not asked (the request was decided before authorization)"),
        Some(Err(e)) => println!("  Cedar could not evaluate the request: {e}"),
        Some(Ok(x)) => {
            println!("  principal:   {}", x.principal);
            println!("  action:      {}", x.action);
            println!("  resource:    {}", x.resource);
            println!("  context:     {}", x.context);
            for en in &x.entities {
                println!("  entity:      {en}");
            }
            println!("  considered:  {} of {} policies: {}", x.considered.len(), x.total, list(&x.considered));
            println!("  satisfied:   {}", list(&x.satisfied));
            println!("  determining: {}", list(&x.determining));
            if x.errors.is_empty() {
                println!("  errors:      -");
            }
            for (id, msg) in &x.errors {
                println!("  error:       {id}: {msg}");
            }
            println!("  cedar:       {}", if x.allowed { "allow" } else { "deny" });
        }
    }
}
