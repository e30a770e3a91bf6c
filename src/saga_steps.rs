//! Sagas whose steps change while their name stays. An instance records its steps when it
//! starts; one still in flight when a version with other steps starts cannot be run
//! against them, so the runner parks it (`platform::saga`, state `parked`) for an operator.
//! `update` warns before that happens, from the owner's previously generated `sagas.rs`.

use std::collections::BTreeMap;

use crate::spec::Spec;

/// Each saga of a generated `sagas.rs` (as rustfmt lays out its `Definition`s) with its
/// step labels in order.
pub fn defined(sagas_rs: &str) -> BTreeMap<String, Vec<String>> {
    let mut sagas = BTreeMap::new();
    let mut current: Option<(String, Vec<String>)> = None;
    let quoted = |line: &str, key: &str| -> Option<String> {
        let rest = line.trim().strip_prefix(key)?.strip_prefix(": \"")?;
        Some(rest.strip_suffix("\",")?.to_string())
    };
    for line in sagas_rs.lines() {
        if line.contains(": Definition = Definition {") {
            current = Some((String::new(), Vec::new()));
        } else if let Some((name, labels)) = current.as_mut() {
            if let Some(found) = quoted(line, "name") {
                *name = found;
            } else if let Some(label) = quoted(line, "label") {
                labels.push(label);
            } else if line.trim_start().starts_with("timeout:") {
                let (name, labels) = current.take().unwrap_or_default();
                sagas.insert(name, labels);
            }
        }
    }
    sagas
}

/// A warning for each saga of `spec` whose steps differ from those its owner's previous
/// `sagas.rs` defined under the same name, and for each saga that file defined and the
/// spec no longer has. `previous` reads a generated file as the last update wrote it.
pub fn warnings(spec: &Spec, previous: impl Fn(&str) -> Option<String>) -> Vec<String> {
    let mut found = Vec::new();
    for owner in &spec.contexts {
        let Some(text) = previous(&crate::layout::sagas(&owner.name.kebab)) else {
            continue;
        };
        let alert = format!("{}SagaParked", owner.name.pascal);
        for (name, before) in defined(&text) {
            let now = owner.sagas.iter().find(|s| s.name.snake == name);
            match now.map(|s| s.steps.iter().map(|step| step.label.clone()).collect::<Vec<_>>()) {
                Some(after) if after == before => {}
                Some(after) => found.push(format!(
                    "saga `{name}` of {} keeps its name but its steps change ({} -> {}): instances still in flight when the new version starts are parked (state `parked`, alert `{alert}`), not run against steps they never recorded. Let them finish before you deploy, or give the changed saga a new name.",
                    owner.name.raw,
                    before.join(", "),
                    after.join(", ")
                )),
                None => found.push(format!(
                    "saga `{name}` of {} is gone from the spec: instances still in flight when the new version starts are parked (state `parked`, alert `{alert}`). Let them finish before you deploy.",
                    owner.name.raw
                )),
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const GENERATED: &str = r#"
pub const PLACE_ORDER: Definition = Definition {
    name: "place_order",
    steps: &[
        StepInfo {
            label: "create payments",
            compensable: true,
        },
        StepInfo {
            label: "inventory.reserve",
            compensable: true,
        },
    ],
    timeout: Duration::from_millis(30000),
};

pub const REFUND: Definition = Definition {
    name: "refund",
    steps: &[StepInfo {
        label: "payments.refund",
        compensable: false,
    }],
    timeout: Duration::from_millis(60000),
};
"#;

    #[test]
    fn reads_each_definition_and_its_labels_in_order() {
        let sagas = defined(GENERATED);
        assert_eq!(
            sagas["place_order"],
            ["create payments", "inventory.reserve"]
        );
        assert_eq!(sagas["refund"], ["payments.refund"]);
        assert_eq!(sagas.len(), 2);
    }

    fn checkout() -> Spec {
        let text = include_str!("../examples/checkout.toml");
        crate::spec::parse(text, "checkout.toml", &crate::spec::Overrides::default()).unwrap()
    }

    #[test]
    fn same_steps_warn_of_nothing_other_steps_and_a_removed_saga_do() {
        let spec = checkout();
        let same = "pub const PLACE_ORDER: Definition = Definition {\n    name: \"place_order\",\n    steps: &[\n        StepInfo {\n            label: \"create payments\",\n        },\n        StepInfo {\n            label: \"inventory.reserve\",\n        },\n        StepInfo {\n            label: \"create shipping\",\n        },\n    ],\n    timeout: Duration::from_millis(30000),\n};\n";
        let previous = |text: &'static str| {
            move |path: &str| (path == "services/orders/src/sagas.rs").then(|| text.to_string())
        };
        assert_eq!(warnings(&spec, previous(same)), Vec::<String>::new());
        let warned = warnings(&spec, previous(GENERATED));
        assert_eq!(warned.len(), 2, "{warned:?}");
        assert!(
            warned[0].contains("saga `place_order` of orders keeps its name but its steps change (create payments, inventory.reserve -> create payments, inventory.reserve, create shipping)"),
            "{warned:?}"
        );
        assert!(warned[0].contains("alert `OrdersSagaParked`"), "{warned:?}");
        assert!(
            warned[1].starts_with("saga `refund` of orders is gone from the spec"),
            "{warned:?}"
        );
    }
}
