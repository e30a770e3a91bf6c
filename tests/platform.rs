//! The chassis crate (blueprints/platform) as a dependency of generated workspaces: its
//! version moves with its tree, and the workspace asks for its dependencies as it does.

use std::collections::BTreeMap;

use archscaffold::blueprint::Blueprint;
use archscaffold::plan::Plan;
use archscaffold::spec::{self, Bus, Overrides};

/// Every released platform version and the hash of its tree (`tree_sha256` in a lock).
/// A workspace that records one of these versions has exactly this tree, so `update`
/// can tell an edit from a release; a change to blueprints/platform is a new version.
const RELEASED: &[(&str, &str)] = &[
    (
        "0.9.0",
        "7725863bbb8f111782f04568ace96f2c4dd0aff73244299e8538246ca1403088",
    ),
    (
        "0.10.0",
        "8ce73e66a359bf7b504dd3b58060f04778df07e7e8eb8bf216d3a8cebe78670a",
    ),
    (
        "0.11.0",
        "96f447b1545912b918d180147572a819501a528e63d6546eed14560e9fd1fa4a",
    ),
    (
        "0.12.0",
        "0a5a0d21db79e715d1484aa5ca79f0f101ac8cd98ff2fa5cfa028613a8719e6f",
    ),
    (
        "0.13.0",
        "1254efd175298560ad674a60c0e43f5a2a0df00c22fc5023529c5d5b9408ca73",
    ),
    (
        "0.14.0",
        "9b32ffcc1f001e587234c3d9755837749beffe0d3d1c8922d470da1737ebc373",
    ),
    (
        "0.15.0",
        "00ad07d3e41c13fa8a057b19e2f35b282c0c272d5ec5e39731dcc6b3ab32eccd",
    ),
    (
        "0.16.0",
        "a77f8e2c2a4420ce3f81df38149e7b41b9c2c56a8a433b3f8db7a527367303b7",
    ),
];

fn shipped() -> archscaffold::platform::Chassis {
    Blueprint::embedded()
        .unwrap()
        .platform
        .expect("the embedded blueprint ships the platform")
}

#[test]
fn a_released_platform_version_keeps_its_tree() {
    let chassis = shipped();
    let tree = chassis.recorded().tree_sha256;
    match RELEASED.iter().find(|(v, _)| *v == chassis.version) {
        Some((version, hash)) => assert_eq!(
            *hash, tree,
            "blueprints/platform changed, but its version {version} was released with another tree: bump `version` in blueprints/platform/Cargo.toml and add (\"<new version>\", \"{tree}\") to RELEASED"
        ),
        None => panic!(
            "platform {} is not in RELEASED: add (\"{}\", \"{tree}\")",
            chassis.version, chassis.version
        ),
    }
}

/// `name -> (version, default-features, features)` of a dependency table.
fn requirements(table: &toml::Table) -> BTreeMap<String, (String, bool, Vec<String>)> {
    table
        .iter()
        .map(|(name, value)| {
            let req = match value {
                toml::Value::String(v) => (v.clone(), true, Vec::new()),
                toml::Value::Table(t) => (
                    t.get("version")
                        .and_then(|v| v.as_str())
                        .unwrap_or_default()
                        .to_string(),
                    t.get("default-features")
                        .and_then(|v| v.as_bool())
                        .unwrap_or(true),
                    t.get("features")
                        .and_then(|f| f.as_array())
                        .map(|f| {
                            f.iter()
                                .filter_map(|x| x.as_str().map(str::to_string))
                                .collect()
                        })
                        .unwrap_or_default(),
                ),
                other => panic!("{name}: unexpected dependency {other}"),
            };
            (name.clone(), req)
        })
        .collect()
}

#[test]
fn a_workspace_asks_for_the_platform_s_dependencies_as_the_platform_does() {
    let chassis = shipped();
    let manifest: toml::Table =
        toml::from_str(&String::from_utf8_lossy(&chassis.files["Cargo.toml"])).unwrap();
    let platform = requirements(manifest["dependencies"].as_table().unwrap());
    for bus in [Bus::Kafka, Bus::Sqs] {
        let overrides = Overrides {
            bus: Some(bus),
            ..Default::default()
        };
        let spec = spec::parse(
            "name = \"shop\"\n[contexts.orders]\n[contexts.billing]\n",
            "t.toml",
            &overrides,
        )
        .unwrap();
        let plan = Plan::build(&spec, &Blueprint::embedded().unwrap(), &[]).unwrap();
        let root: toml::Table =
            toml::from_str(&String::from_utf8_lossy(&plan.files["Cargo.toml"].contents)).unwrap();
        let workspace = requirements(root["workspace"]["dependencies"].as_table().unwrap());
        let shared: Vec<&String> = platform
            .keys()
            .filter(|n| workspace.contains_key(*n))
            .collect();
        assert!(shared.len() > 10, "{shared:?}");
        for name in shared {
            assert_eq!(
                platform[name], workspace[name],
                "{name}: blueprints/platform/Cargo.toml and the workspace's Cargo.toml.liquid ask for it differently; one build of it serves both only when they agree"
            );
        }
        let dependency = root["workspace"]["dependencies"]["platform"]
            .as_table()
            .unwrap();
        assert_eq!(
            dependency["version"].as_str(),
            Some(chassis.version.as_str())
        );
        assert_eq!(
            dependency["features"].as_array().unwrap()[0].as_str(),
            Some(bus.as_str())
        );
        let excluded = root["workspace"]["exclude"].as_array().unwrap();
        assert_eq!(excluded[0].as_str(), Some("crates/platform"));
    }
}
