//! Writes a validated spec back as TOML: every default made explicit, in a stable order,
//! so the generated workspace's `archscaffold.toml` says exactly what was generated.

use super::model::{Spec, TeamTemplate, TemplateSource, TemplateValue};

pub fn to_toml(spec: &Spec) -> String {
    let mut out = String::new();
    out.push_str("# The spec this workspace was generated from, with every default written out.\n");
    out.push_str(
        "# Edit it and regenerate; `archscaffold validate --spec archscaffold.toml` checks it.\n",
    );
    out.push_str(&format!("name = {}\n", quote(&spec.system.raw)));
    out.push_str(&format!("bus = {}\n", quote(spec.bus.as_str())));
    out.push_str(&format!(
        "\n[platform]\nsource = {}\n",
        quote(spec.platform.as_str())
    ));
    for ctx in &spec.contexts {
        out.push_str(&format!("\n[contexts.{}]\n", ctx.name.raw));
        out.push_str(&format!(
            "aggregate = {}\n",
            quote(&ctx.aggregate.name.pascal)
        ));
        if !ctx.fields.is_empty() {
            let fields: Vec<String> = ctx
                .fields
                .iter()
                .map(|f| match &f.reference {
                    Some(target) => {
                        format!("{} = {}", f.name, quote(&format!("ref:{}", target.raw)))
                    }
                    None => format!("{} = {}", f.name, quote(f.kind.as_str())),
                })
                .collect();
            out.push_str(&format!("fields = {{ {} }}\n", fields.join(", ")));
        }
        let events: Vec<String> = ctx
            .events
            .iter()
            .filter(|e| e.declared)
            .map(|e| quote(&e.name.raw))
            .collect();
        out.push_str(&format!("publishes = [{}]\n", events.join(", ")));
        if !ctx.subscribes.is_empty() {
            let subs: Vec<String> = ctx
                .subscribes
                .iter()
                .map(|s| quote(&format!("{}.{}", s.context.raw, s.event.raw)))
                .collect();
            out.push_str(&format!("subscribes = [{}]\n", subs.join(", ")));
        }
        if !ctx.calls.is_empty() {
            let calls: Vec<String> = ctx.calls.iter().map(|c| quote(&c.raw)).collect();
            out.push_str(&format!("calls = [{}]\n", calls.join(", ")));
        }
        if !ctx.states.is_empty() {
            let states: Vec<String> = ctx.states.iter().map(|s| quote(&s.raw)).collect();
            out.push_str(&format!("states = [{}]\n", states.join(", ")));
        }
        let crud: Vec<String> = ctx.crud.names().into_iter().map(quote).collect();
        out.push_str(&format!("crud = [{}]\n", crud.join(", ")));
        if ctx.require_if_match {
            out.push_str("require_if_match = true\n");
        }
        out.push_str(&format!("replicas = {}\n", ctx.replicas.len()));
        out.push_str(&format!("max_replicas = {}\n", ctx.max_replicas));
        let slo = &ctx.slo;
        out.push_str(&format!(
            "slo = {{ p99_ms = {}, error_rate_percent = {:?}, max_outbox_backlog = {}, max_consumer_lag = {} }}\n",
            slo.p99_ms, slo.error_rate_percent, slo.max_outbox_backlog, slo.max_consumer_lag
        ));
        for cmd in &ctx.commands {
            out.push_str(&format!(
                "\n[contexts.{}.commands.{}]\n",
                ctx.name.raw, cmd.name.raw
            ));
            if !cmd.from.is_empty() {
                let from: Vec<String> = cmd.from.iter().map(|s| quote(&s.raw)).collect();
                out.push_str(&format!("from = [{}]\n", from.join(", ")));
            }
            if let Some(to) = &cmd.to {
                out.push_str(&format!("to = {}\n", quote(&to.raw)));
            }
            if !cmd.set.is_empty() {
                let set: Vec<String> = cmd.set.iter().map(|f| quote(&f.name)).collect();
                out.push_str(&format!("set = [{}]\n", set.join(", ")));
            }
            if !cmd.fields.is_empty() {
                let fields: Vec<String> = cmd
                    .fields
                    .iter()
                    .map(|f| format!("{} = {}", f.name, quote(f.kind.as_str())))
                    .collect();
                out.push_str(&format!("fields = {{ {} }}\n", fields.join(", ")));
            }
            out.push_str(&format!("emits = {}\n", quote(&cmd.event.raw)));
        }
    }
    for saga in &spec.sagas {
        out.push_str(&format!("\n[sagas.{}]\n", saga.name.raw));
        out.push_str(&format!("owner = {}\n", quote(&saga.owner.raw)));
        out.push_str(&format!(
            "start = {}\n",
            quote(&format!("{}.{}", saga.owner.raw, saga.start.raw))
        ));
        out.push_str(&format!("timeout = {}\n", quote(&saga.timeout)));
        out.push_str("steps = [\n");
        for step in &saga.steps {
            let mut parts = Vec::new();
            match (&step.forward.command, &step.on) {
                (Some(command), Some(on)) => {
                    let target = format!("{}.{}", step.forward.context.raw, command.raw);
                    parts.push(format!("command = {}", quote(&target)));
                    parts.push(format!("on = {}", quote(on)));
                }
                _ => parts.push(format!("create = {}", quote(&step.forward.context.raw))),
            }
            if let Some(command) = step.compensate.as_ref().and_then(|c| c.command.as_ref()) {
                parts.push(format!("compensate = {}", quote(&command.raw)));
            }
            out.push_str(&format!("  {{ {} }},\n", parts.join(", ")));
        }
        out.push_str("]\n");
        for (key, call) in [
            ("on_success", &saga.on_success),
            ("on_failure", &saga.on_failure),
        ] {
            if let Some(command) = call.as_ref().and_then(|c| c.command.as_ref()) {
                out.push_str(&format!("{key} = {}\n", quote(&command.raw)));
            }
        }
    }
    for template in &spec.templates {
        out.push_str(&template_table(template));
    }
    out
}

/// A `[[template]]` entry. Its paths and values are the user's text, so they are quoted
/// as TOML strings with escapes.
fn template_table(template: &TeamTemplate) -> String {
    let string = |s: &str| toml::Value::String(s.to_string()).to_string();
    let mut out = format!("\n[[template]]\nname = {}\n", string(&template.name));
    match &template.source {
        TemplateSource::Path(path) => out.push_str(&format!("path = {}\n", string(path))),
        TemplateSource::Git { url, rev } => {
            out.push_str(&format!("git = {}\nrev = {}\n", string(url), string(rev)));
        }
    }
    if let Some(subfolder) = &template.subfolder {
        out.push_str(&format!("subfolder = {}\n", string(subfolder)));
    }
    if template.each_context {
        out.push_str("each = \"context\"\n");
    }
    let owner = if template.owner_is_user {
        "user"
    } else {
        "generator"
    };
    out.push_str(&format!("owner = \"{owner}\"\n"));
    if !template.values.is_empty() {
        out.push_str("[template.values]\n");
        for (key, value) in &template.values {
            let value = match value {
                TemplateValue::String(s) => string(s),
                TemplateValue::Bool(b) => b.to_string(),
            };
            out.push_str(&format!("{} = {value}\n", toml_key(key)));
        }
    }
    out
}

/// A key as TOML writes it: bare when it can be, quoted otherwise.
fn toml_key(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '-');
    if bare {
        key.to_string()
    } else {
        toml::Value::String(key.to_string()).to_string()
    }
}

/// Names are validated to plain ASCII, so a basic string needs no escaping.
fn quote(s: &str) -> String {
    format!("\"{s}\"")
}

#[cfg(test)]
mod tests {
    use super::super::{Overrides, from_contexts, model::Bus, parse};
    use super::to_toml;

    #[test]
    fn canonical_spec_reparses_to_the_same_canonical_text() {
        let spec = from_contexts("shop", &["orders".into(), "billing".into()], Bus::Kafka).unwrap();
        let text = to_toml(&spec);
        let again = parse(&text, "archscaffold.toml", &Overrides::default()).unwrap();
        assert_eq!(to_toml(&again), text);
        assert!(
            text.contains("subscribes = [\"orders.OrderCreated\"]"),
            "{text}"
        );
    }

    #[test]
    fn a_ref_is_written_back_as_a_ref_and_implies_the_call() {
        let text = "name = \"shop\"\n[contexts.catalog]\n[contexts.checkout]\nfields = { item_id = \"ref:catalog\", quantity = \"i32\" }\n";
        let spec = parse(text, "spec.toml", &Overrides::default()).unwrap();
        let checkout = &spec.contexts[1];
        assert_eq!(checkout.calls[0].raw, "catalog", "the ref implies the call");
        assert_eq!(
            checkout.fields[0].reference.as_ref().unwrap().raw,
            "catalog"
        );
        let canonical = to_toml(&spec);
        assert!(
            canonical.contains("fields = { item_id = \"ref:catalog\", quantity = \"i32\" }"),
            "{canonical}"
        );
        assert!(canonical.contains("calls = [\"catalog\"]"), "{canonical}");
        let again = parse(&canonical, "archscaffold.toml", &Overrides::default()).unwrap();
        assert_eq!(to_toml(&again), canonical);
    }

    #[test]
    fn templates_are_written_back_with_their_text_escaped() {
        let text = r#"name = "shop"
[contexts.orders]

[[template]]
name = "team-ci"
git = "file:///srv/git/extras.git"
rev = "v1.4.0"
subfolder = "per-service"
each = "context"
[template.values]
team = "pay\"ments"
"on call" = true

[[template]]
name = "runbooks"
path = "../svc extras"
owner = "user"
"#;
        let spec = parse(text, "spec.toml", &Overrides::default()).unwrap();
        assert_eq!(spec.templates.len(), 2);
        let canonical = to_toml(&spec);
        assert!(canonical.contains("team = 'pay\"ments'\n"), "{canonical}");
        assert!(canonical.contains("\"on call\" = true\n"), "{canonical}");
        assert!(
            canonical.contains("each = \"context\"\nowner = \"generator\"\n"),
            "{canonical}"
        );
        let again = parse(&canonical, "archscaffold.toml", &Overrides::default()).unwrap();
        assert_eq!(again.templates, spec.templates);
        assert_eq!(to_toml(&again), canonical);
    }

    #[test]
    fn replicas_are_written_back() {
        let text = "name = \"shop\"\n[contexts.orders]\nreplicas = 3\n[contexts.billing]\n";
        let spec = parse(text, "spec.toml", &Overrides::default()).unwrap();
        let processes: Vec<&str> = spec.contexts[0]
            .replicas
            .iter()
            .map(|r| r.process.as_str())
            .collect();
        assert_eq!(processes, ["orders", "orders-2", "orders-3"]);
        assert_eq!(
            spec.contexts[0].replicas[2].grpc_port,
            spec.contexts[0].grpc_port + 2000
        );
        assert_eq!(spec.contexts[1].replicas.len(), 2, "the default");
        let canonical = to_toml(&spec);
        assert!(
            canonical.contains("replicas = 3\nmax_replicas = 10\n"),
            "{canonical}"
        );
        assert!(
            canonical.contains("replicas = 2\n"),
            "the default written out: {canonical}"
        );
        let again = parse(&canonical, "archscaffold.toml", &Overrides::default()).unwrap();
        assert_eq!(to_toml(&again), canonical);
    }
}
