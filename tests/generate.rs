//! What `archscaffold new` writes: deterministic bytes, a lock file that matches them,
//! ownership headers, a first git commit, blueprint overrides, and snapshots of key files.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use archscaffold::blueprint::Blueprint;
use archscaffold::plan::Plan;
use archscaffold::spec::{self, Bus, Overrides};

fn generate(dir: &Path, args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_archscaffold"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run archscaffold");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every file under `root` except `.git`, path → bytes.
fn tree(root: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path: PathBuf = entry.unwrap().path();
            if path.file_name().is_some_and(|n| n == ".git") {
                continue;
            }
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let rel = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .replace('\\', "/");
                out.insert(rel, fs::read(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn rich_spec() -> spec::Spec {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/specs/rich.toml");
    spec::load(&path, &Overrides::default()).unwrap()
}

#[test]
fn the_same_spec_gives_byte_identical_trees() {
    let dir = tempfile::tempdir().unwrap();
    generate(
        dir.path(),
        &["new", "shop", "--contexts", "orders,billing", "--out", "a"],
    );
    generate(
        dir.path(),
        &["new", "shop", "--contexts", "orders,billing", "--out", "b"],
    );
    let (a, b) = (tree(&dir.path().join("a")), tree(&dir.path().join("b")));
    assert!(a.len() > 30, "{} files", a.len());
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (path, bytes) in &a {
        assert!(&b[path] == bytes, "{path} differs between runs");
    }
}

#[test]
fn the_lock_file_records_version_spec_hash_and_every_file_as_written() {
    let dir = tempfile::tempdir().unwrap();
    generate(
        dir.path(),
        &["new", "shop", "--contexts", "orders,billing", "--no-git"],
    );
    let root = dir.path().join("shop");
    let (files, kept): (BTreeMap<_, _>, BTreeMap<_, _>) = tree(&root)
        .into_iter()
        .partition(|(path, _)| !path.starts_with(".archscaffold/"));
    let lock: toml::Table =
        toml::from_str(&String::from_utf8_lossy(&files["archscaffold.lock"])).unwrap();
    assert_eq!(
        lock["generator"].as_str(),
        Some(concat!("archscaffold ", env!("CARGO_PKG_VERSION")))
    );
    assert_eq!(
        lock["spec_sha256"].as_str().unwrap(),
        archscaffold::lock::sha256_hex(&files["archscaffold.toml"])
    );
    // The vendored platform: the crate of blueprints/platform byte for byte, recorded by
    // version and hashes in `[platform]`, with no ownership header and no merge base.
    let (vendored, files): (BTreeMap<_, _>, BTreeMap<_, _>) = files
        .into_iter()
        .partition(|(path, _)| path.starts_with("crates/platform/"));
    let shipped = tree(&Path::new(env!("CARGO_MANIFEST_DIR")).join("blueprints/platform"));
    let vendored: BTreeMap<String, Vec<u8>> = vendored
        .into_iter()
        .map(|(path, bytes)| (path["crates/platform/".len()..].to_string(), bytes))
        .collect();
    assert_eq!(
        vendored.keys().collect::<Vec<_>>(),
        shipped.keys().collect::<Vec<_>>()
    );
    let mut expected = shipped.clone();
    expected
        .get_mut("Cargo.toml")
        .unwrap()
        .extend_from_slice(archscaffold::platform::OWN_WORKSPACE.as_bytes());
    assert!(
        vendored == expected,
        "the vendored platform differs from blueprints/platform"
    );
    let platform = lock["platform"].as_table().unwrap();
    assert_eq!(platform["source"].as_str(), Some("vendored"));
    let manifest: toml::Table =
        toml::from_str(&String::from_utf8_lossy(&shipped["Cargo.toml"])).unwrap();
    assert_eq!(platform["version"], manifest["package"]["version"]);
    let hashes = platform["files"].as_table().unwrap();
    assert_eq!(hashes.len(), shipped.len());
    for (path, bytes) in &expected {
        assert_eq!(
            hashes[path].as_str(),
            Some(archscaffold::lock::sha256_hex(bytes).as_str()),
            "{path}"
        );
    }
    assert!(
        !kept
            .keys()
            .any(|p| p.starts_with(".archscaffold/base/crates/platform")),
        "the platform is not merged, so it has no base"
    );
    let recorded = lock["files"].as_table().unwrap();
    assert_eq!(
        recorded.len(),
        files.len() - 1,
        "every file but the lock itself and the vendored platform"
    );
    for (path, bytes) in &files {
        if path == "archscaffold.lock" {
            continue;
        }
        let entry = recorded
            .get(path)
            .unwrap_or_else(|| panic!("{path} missing from lock"));
        assert_eq!(
            entry["sha256"].as_str().unwrap(),
            archscaffold::lock::sha256_hex(bytes),
            "{path}"
        );
        let owner = entry["owner"].as_str().unwrap();
        let text = String::from_utf8_lossy(bytes);
        let first_lines: String = text.lines().take(2).collect::<Vec<_>>().join("\n");
        if path.ends_with(".rs") || path.ends_with(".proto") || path.ends_with(".sql") {
            let marker = if owner == "user" {
                "Owned by you"
            } else {
                "@generated by archscaffold"
            };
            assert!(
                first_lines.contains(marker),
                "{path} ({owner}) starts with {first_lines:?}"
            );
            // A blueprint file that carries a header itself would get a second one.
            let headers = text
                .lines()
                .filter(|l| (l.starts_with("//") || l.starts_with("--")) && l.contains(marker))
                .count();
            assert_eq!(headers, 1, "{path} has {headers} ownership headers");
        }
    }
    assert_eq!(
        recorded["services/orders/src/domain/rules.rs"]["owner"].as_str(),
        Some("user")
    );
    // The merge base: every generator-owned file but the lock, byte for byte, and nothing
    // of the user's.
    let mut expected_base: BTreeMap<String, &Vec<u8>> = BTreeMap::new();
    for (path, bytes) in &files {
        if path != "archscaffold.lock" && recorded[path]["owner"].as_str() == Some("generator") {
            expected_base.insert(format!(".archscaffold/base/{path}"), bytes);
        }
    }
    let kept_base: BTreeMap<String, &Vec<u8>> = kept
        .iter()
        .filter(|(path, _)| path.starts_with(".archscaffold/base/"))
        .map(|(path, bytes)| (path.clone(), bytes))
        .collect();
    assert_eq!(kept_base, expected_base);
    assert!(kept.contains_key(".archscaffold/.gitattributes"));
    assert_eq!(
        recorded["services/orders/src/app.rs"]["owner"].as_str(),
        Some("generator")
    );
}

#[test]
fn the_first_commit_holds_exactly_the_generated_files() {
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path(), &["new", "shop", "--contexts", "orders"]);
    let root = dir.path().join("shop");
    let repo = git2::Repository::open(&root).unwrap();
    let head = repo.head().unwrap();
    assert_eq!(head.shorthand().ok(), Some("main"));
    let commit = head.peel_to_commit().unwrap();
    assert_eq!(commit.parent_count(), 0);
    let mut committed = Vec::new();
    commit
        .tree()
        .unwrap()
        .walk(git2::TreeWalkMode::PreOrder, |dir, entry| {
            if entry.kind() == Some(git2::ObjectType::Blob) {
                committed.push(format!("{dir}{}", entry.name().unwrap()));
            }
            git2::TreeWalkResult::Ok
        })
        .unwrap();
    committed.sort();
    let head_tree = commit.tree().unwrap();
    for script in ["deploy/local/up.sh", "deploy/local/down.sh"] {
        let entry = head_tree.get_path(Path::new(script)).unwrap();
        assert_eq!(
            entry.filemode(),
            0o100755,
            "{script} is committed executable"
        );
    }
    let on_disk: Vec<String> = tree(&root).into_keys().collect();
    assert_eq!(committed, on_disk);
    assert!(
        repo.statuses(None).unwrap().is_empty(),
        "work tree clean after generation"
    );
    for (path, bytes) in tree(&root) {
        let blob = head_tree
            .get_path(Path::new(&path))
            .unwrap()
            .to_object(&repo)
            .unwrap();
        assert_eq!(
            blob.as_blob().unwrap().content(),
            bytes.as_slice(),
            "{path} as committed"
        );
    }
    // git itself, where it is installed, finds the pack and its index sound and the
    // work tree clean (the index holds each file's stat data).
    if let Ok(fsck) = std::process::Command::new("git")
        .args(["fsck", "--strict", "--full"])
        .current_dir(&root)
        .output()
    {
        assert!(
            fsck.status.success(),
            "git fsck: {}",
            String::from_utf8_lossy(&fsck.stderr)
        );
        let status = std::process::Command::new("git")
            .args(["status", "--porcelain"])
            .current_dir(&root)
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&status.stdout),
            "",
            "git status is clean"
        );
    }
}

#[test]
fn three_and_twenty_contexts_plan_one_service_each_with_distinct_ports() {
    let blueprint = Blueprint::embedded().unwrap();
    for n in [3usize, 20] {
        let names: Vec<String> = (0..n).map(|i| format!("ctx{i}")).collect();
        let spec = spec::from_contexts("big", &names, Bus::Kafka).unwrap();
        let plan = Plan::build(&spec, &blueprint, &[]).unwrap();
        for name in &names {
            assert!(
                plan.files
                    .contains_key(&format!("services/{name}/src/main.rs"))
            );
            assert!(
                plan.files
                    .contains_key(&format!("proto/big/{name}/v1/{name}.proto"))
            );
        }
        let ports: std::collections::BTreeSet<u16> =
            spec.contexts.iter().map(|c| c.grpc_port).collect();
        assert_eq!(ports.len(), n);
        // Every replica of every service, gRPC and metrics, and the gateway's 8080 and
        // 9464: no two processes of a local run share a port.
        let mut every_port = vec![8080, 9464];
        for c in &spec.contexts {
            assert_eq!(c.replicas.len(), 2, "two replicas by default");
            assert_eq!(
                (c.replicas[0].grpc_port, c.replicas[0].metrics_port),
                (c.grpc_port, c.metrics_port)
            );
            every_port.extend(
                c.replicas
                    .iter()
                    .flat_map(|r| [r.grpc_port, r.metrics_port]),
            );
        }
        let distinct: std::collections::BTreeSet<u16> = every_port.iter().copied().collect();
        assert_eq!(distinct.len(), every_port.len(), "{every_port:?}");
        let members = String::from_utf8_lossy(&plan.files["Cargo.toml"].contents)
            .matches("\"services/")
            .count();
        assert_eq!(members, n);
    }
}

#[test]
fn the_default_chain_subscribes_each_context_to_the_previous_one() {
    let spec = spec::from_contexts(
        "shop",
        &["orders".into(), "billing".into(), "shipping".into()],
        Bus::Kafka,
    )
    .unwrap();
    let subs: Vec<(String, String)> = spec
        .contexts
        .iter()
        .flat_map(|c| {
            c.subscribes.iter().map(move |s| {
                (
                    c.name.raw.clone(),
                    format!("{}.{}", s.context.raw, s.event.raw),
                )
            })
        })
        .collect();
    assert_eq!(
        subs,
        [
            ("billing".to_string(), "orders.OrderCreated".to_string()),
            ("shipping".to_string(), "billing.BillingCreated".to_string())
        ]
    );
    let (orders, billing) = (&spec.contexts[0], &spec.contexts[1]);
    // Publisher and subscriber agree on the wire names.
    assert_eq!(billing.subscribes[0].topic, orders.events[0].topic);
    // One topic per aggregate: every event of the Order goes there.
    assert_eq!(billing.subscribes[0].topic, "shop.orders.order.v1");
    assert!(orders.events.iter().all(|e| e.topic == orders.topic));
    assert_eq!(billing.subscribes[0].event_type, orders.events[0].type_name);
    assert_eq!(
        billing
            .all_fields
            .iter()
            .map(|f| f.name.as_str())
            .collect::<Vec<_>>(),
        ["order_id"]
    );
}

#[test]
fn a_blueprint_directory_overrides_the_built_in_one() {
    let dir = tempfile::tempdir().unwrap();
    let bp = dir.path().join("bp");
    fs::create_dir_all(bp.join("ws")).unwrap();
    fs::create_dir_all(bp.join("each/{{ context.name.kebab }}")).unwrap();
    fs::write(
        bp.join("manifest.toml"),
        "[[set]]\nfolder = \"ws\"\n[[set]]\nfolder = \"each\"\neach = \"context\"\n",
    )
    .unwrap();
    fs::write(
        bp.join("ws/SYSTEM.txt.liquid"),
        "{{ system.raw | shouty_snake_case }}\n",
    )
    .unwrap();
    fs::write(
        bp.join("each/{{ context.name.kebab }}/name.txt.liquid"),
        "{{ context.aggregate.name.pascal }}\n",
    )
    .unwrap();
    generate(
        dir.path(),
        &[
            "new",
            "shop",
            "--contexts",
            "orders,line-items",
            "--blueprints",
            "bp",
            "--no-git",
        ],
    );
    let out = tree(&dir.path().join("shop"));
    assert_eq!(
        out.keys().collect::<Vec<_>>(),
        [
            ".archscaffold/.gitattributes",
            ".archscaffold/base/SYSTEM.txt",
            ".archscaffold/base/line-items/name.txt",
            ".archscaffold/base/orders/name.txt",
            "SYSTEM.txt",
            "archscaffold.lock",
            "archscaffold.toml",
            "line-items/name.txt",
            "orders/name.txt"
        ]
    );
    assert_eq!(out["SYSTEM.txt"], b"SHOP\n");
    assert_eq!(out["line-items/name.txt"], b"LineItem\n");
}

#[test]
fn snapshot_of_the_default_tree() {
    let spec =
        spec::from_contexts("shop", &["orders".into(), "billing".into()], Bus::Kafka).unwrap();
    let plan = Plan::build(&spec, &Blueprint::embedded().unwrap(), &[]).unwrap();
    let listing: Vec<String> = plan
        .files
        .iter()
        .map(|(p, f)| format!("{p}  {}", f.owner.as_str()))
        .collect();
    insta::assert_snapshot!("default_tree", listing.join("\n"));
    insta::assert_snapshot!(
        "orders_proto",
        String::from_utf8_lossy(&plan.files["proto/shop/orders/v1/orders.proto"].contents)
    );
}

#[test]
fn snapshot_of_a_spec_with_every_field_type() {
    let spec = rich_spec();
    let plan = Plan::build(&spec, &Blueprint::embedded().unwrap(), &[]).unwrap();
    for path in [
        "archscaffold.toml",
        "proto/market/catalog/v1/catalog.proto",
        "services/catalog/src/infra.rs",
        "services/order-items/migrations/0001_init.sql",
    ] {
        let name = path.replace(['/', '.'], "_");
        insta::assert_snapshot!(name, String::from_utf8_lossy(&plan.files[path].contents));
    }
}

#[test]
fn the_openapi_document_describes_every_context_route_and_field() {
    let plan = Plan::build(&rich_spec(), &Blueprint::embedded().unwrap(), &[]).unwrap();
    let json = &plan.files["gateway/openapi.json"].contents;
    let doc: serde_json::Value = serde_json::from_slice(json).unwrap();
    let paths: Vec<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        paths,
        [
            "/v1/catalog",
            "/v1/catalog/events",
            "/v1/catalog/{id}",
            "/v1/catalog/{id}/events",
            "/v1/order-items",
            "/v1/order-items/events",
            "/v1/order-items/{id}",
            "/v1/order-items/{id}/events",
            "/v1/shipping",
            "/v1/shipping/events",
            "/v1/shipping/{id}",
            "/v1/shipping/{id}/events",
            "/livez",
            "/readyz"
        ]
    );
    // The event streams: server-sent events, the read scope, resumable.
    let follow = &doc["paths"]["/v1/catalog/{id}/events"]["get"];
    assert_eq!(follow["operationId"], "streamProductEvents");
    assert!(follow["responses"]["200"]["content"]["text/event-stream"].is_object());
    assert!(
        follow["description"]
            .as_str()
            .unwrap()
            .contains("Needs scope `catalog:read`")
    );
    let headers: Vec<&str> = follow["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(headers, ["id", "Last-Event-ID"]);
    let every = &doc["paths"]["/v1/catalog/events"]["get"];
    assert_eq!(every["operationId"], "streamProductsEvents");
    let described = every["description"].as_str().unwrap();
    assert!(
        described.contains("market.catalog.v1.ProductListed"),
        "{described}"
    );
    let new_product = &doc["components"]["schemas"]["NewProduct"];
    assert_eq!(new_product["additionalProperties"], false);
    assert_eq!(new_product["properties"]["price_cents"]["format"], "int64");
    assert_eq!(new_product["properties"]["active"]["type"], "boolean");
    assert_eq!(new_product["properties"]["weight_kg"]["type"], "number");
    // The route module of each context exists and names the same paths.
    let routes = String::from_utf8_lossy(&plan.files["gateway/src/api/order_items.rs"].contents);
    assert!(routes.contains("pub const PATH: &str = \"/v1/order-items\";"));
    assert!(routes.contains("\"/v1/order-items/{id}\",\n"));
    // The YAML copy carries the same paths and a generated-file header.
    let yaml = String::from_utf8_lossy(&plan.files["docs/openapi.yaml"].contents);
    assert!(yaml.starts_with("# @generated"));
    for path in paths {
        assert!(yaml.contains(&format!("  \"{path}\":\n")), "{path} in YAML");
    }
}

#[test]
fn on_sqs_every_event_also_goes_to_the_gateway_and_console_queues() {
    let plan = Plan::build(&rich_spec(), &Blueprint::embedded().unwrap(), &[]).unwrap();
    // catalog's Product topic goes to its one subscriber's FIFO queue (once, though it
    // subscribes to two of its events), to the gateway's and to the console's.
    let topics = String::from_utf8_lossy(&plan.files["services/catalog/src/topics.rs"].contents);
    // As rustfmt lays it out: without whitespace and the trailing comma.
    let compact: String = topics
        .split_whitespace()
        .collect::<String>()
        .replace(",]", "]")
        .replace(",)", ")");
    assert!(
        compact.contains(
            "(TOPIC,&[\"market-order-items.fifo\",\"market-gateway.fifo\",\"market-console.fifo\"])"
        ),
        "{topics}"
    );
    let items = String::from_utf8_lossy(&plan.files["services/order-items/src/topics.rs"].contents);
    assert!(
        items.contains("pub const SUBSCRIBES: &[&str] = &[\"market.catalog.product.v1\"];"),
        "{items}"
    );
    let gateway = String::from_utf8_lossy(&plan.files["gateway/src/api/mod.rs"].contents);
    assert!(gateway.contains("(\"market.catalog.product.v1\", &[\"market-gateway.fifo\"])"));
    // The console reads its own queue, under the same route, with a group of its own.
    let console = String::from_utf8_lossy(&plan.files["console/src/main.rs"].contents);
    assert!(
        console.contains("(\"market.catalog.product.v1\", &[\"market-console.fifo\"])"),
        "{console}"
    );
    assert!(console.contains("group: \"market.console\","), "{console}");
}

#[test]
fn each_replicas_pool_on_kubernetes_shares_the_database_budget_by_the_autoscalers_ceiling() {
    let text = "name = \"shop\"\n[contexts.orders]\nmax_replicas = 30\n[contexts.billing]\n";
    let spec = spec::parse(text, "spec.toml", &Overrides::default()).unwrap();
    let plan = Plan::build(&spec, &Blueprint::embedded().unwrap(), &[]).unwrap();
    let manifest = |service: &str| {
        String::from_utf8_lossy(&plan.files[&format!("deploy/k8s/{service}.yaml")].contents)
            .into_owned()
    };
    // orders: 30 pods of 3 connections; billing, by default: 10 pods of 9. Never past 90.
    for (service, max, pool) in [("orders", 30, 3), ("billing", 10, 9)] {
        let text = manifest(service);
        assert!(
            text.contains(&format!("  maxReplicas: {max}\n")),
            "{service}: {text}"
        );
        let shouty = service.to_uppercase();
        assert!(
            text.contains(&format!(
                "- name: {shouty}__DATABASE__MAX_CONNECTIONS\n              value: \"{pool}\"\n"
            )),
            "{service}: {text}"
        );
        assert!(max * pool <= 90);
    }
    let adr = String::from_utf8_lossy(
        &plan.files["docs/adr/0016-database-connections-sized-from-the-autoscaler.md"].contents,
    )
    .into_owned();
    assert!(
        adr.contains("- `orders`: at most 30 replicas of 3 connections, 90 in all."),
        "{adr}"
    );
}

/// Where `text` puts "a" (or "A") right before `word` as a whole word.
fn a_before(text: &str, word: &str) -> Option<String> {
    let bytes = text.as_bytes();
    for article in ["a ", "A "] {
        let needle = format!("{article}{word}");
        for (at, _) in text.match_indices(&needle) {
            let before = at.checked_sub(1).map(|i| bytes[i]);
            let after = bytes.get(at + needle.len()).copied();
            let boundary =
                |b: Option<u8>| b.is_none_or(|b| !b.is_ascii_alphanumeric() && b != b'_');
            if boundary(before) && boundary(after) {
                let line = text[..at].matches('\n').count() + 1;
                return Some(format!(
                    "line {line}: {}",
                    text.lines().nth(line - 1).unwrap_or("").trim()
                ));
            }
        }
    }
    None
}

#[test]
fn names_that_start_with_a_vowel_sound_take_an_everywhere() {
    // checkout: an Order, an Item (and a Payment, a Shipment, which must stay "a").
    let dir = tempfile::tempdir().unwrap();
    let spec = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/checkout.toml");
    generate(
        dir.path(),
        &[
            "new",
            "shop",
            "--spec",
            spec.to_str().unwrap(),
            "--out",
            "shop",
            "--no-git",
        ],
    );
    let files = tree(&dir.path().join("shop"));
    let mut found = Vec::new();
    for (path, bytes) in &files {
        let Ok(text) = std::str::from_utf8(bytes) else {
            continue;
        };
        for word in ["Order", "Item", "order", "item"] {
            if let Some(at) = a_before(text, word) {
                found.push(format!("{path} {at}"));
            }
        }
    }
    assert!(
        found.is_empty(),
        "\"a\" before a vowel sound:\n{}",
        found.join("\n")
    );
    let orders = String::from_utf8_lossy(&files["services/orders/src/domain/mod.rs"]).into_owned();
    assert!(
        orders.contains("cannot {command} an Order that is {state}"),
        "{orders}"
    );
    let payments = String::from_utf8_lossy(&files["services/payments/src/app.rs"]).into_owned();
    assert!(payments.contains("Creates a Payment once per idempotency key"));
}

/// A two-set blueprint in `dir/bp` whose per-context file `subscribed.txt` has the manifest
/// lines `only`, and whose body `body` may render blank.
fn conditional_blueprint(dir: &Path, only: &str, body: &str) {
    let bp = dir.join("bp");
    fs::create_dir_all(bp.join("each/{{ context.name.kebab }}")).unwrap();
    fs::write(
        bp.join("manifest.toml"),
        format!("[[set]]\nfolder = \"each\"\neach = \"context\"\n{only}"),
    )
    .unwrap();
    fs::write(
        bp.join("each/{{ context.name.kebab }}/subscribed.txt.liquid"),
        body,
    )
    .unwrap();
}

fn new_with_blueprint(dir: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_archscaffold"))
        .args([
            "new",
            "shop",
            "--contexts",
            "orders,billing",
            "--blueprints",
            "bp",
            "--no-git",
        ])
        .current_dir(dir)
        .output()
        .unwrap()
}

#[test]
fn a_file_ships_where_its_manifest_condition_holds_and_a_blank_render_is_an_error() {
    // Billing subscribes to orders (the default chain); orders subscribes to nothing.
    let body = "{% for s in context.subscribes %}{{ s.event.pascal }}\n{% endfor %}";
    let only = "[[only]]\nfile = \"each/{{ context.name.kebab }}/subscribed.txt.liquid\"\nwhen = \"context.subscribes.size > 0\"\n";

    let dir = tempfile::tempdir().unwrap();
    conditional_blueprint(dir.path(), only, body);
    let out = new_with_blueprint(dir.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let files = tree(&dir.path().join("shop"));
    assert_eq!(files["billing/subscribed.txt"], b"OrderCreated\n");
    assert!(!files.contains_key("orders/subscribed.txt"));

    // Without its condition, the file renders blank for orders: refused, nothing written.
    let dir = tempfile::tempdir().unwrap();
    conditional_blueprint(dir.path(), "", body);
    let out = new_with_blueprint(dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("each/{{ context.name.kebab }}/subscribed.txt.liquid: renders blank for `orders/subscribed.txt`")
            && stderr.contains("[[only]] file = \"each/{{ context.name.kebab }}/subscribed.txt.liquid\", when = "),
        "{stderr}"
    );
    assert!(
        !dir.path().join("shop").exists(),
        "a refused generation wrote something"
    );

    // A condition for a file that does not exist (a typo) is refused too.
    let dir = tempfile::tempdir().unwrap();
    conditional_blueprint(
        dir.path(),
        &only.replace("subscribed.txt", "subscribe.txt"),
        body,
    );
    let out = new_with_blueprint(dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("[[only]] names `each/{{ context.name.kebab }}/subscribe.txt.liquid`, which is no template"), "{stderr}");
}

/// The routes a generated gateway module registers: (method, path, handler).
fn registered_routes(source: &str) -> Vec<(String, String, String)> {
    let mut routes = Vec::new();
    for segment in source.split(".route(").skip(1) {
        // The last route ends where `routes()` does.
        let segment = segment.split("\n}").next().unwrap();
        let path = segment
            .split('"')
            .nth(1)
            .expect("a path literal")
            .to_string();
        let methods = segment
            .split_once("axum::routing::")
            .expect("a method router")
            .1;
        // `get(fetch).patch(update)`: each `<method>(<handler>)`.
        for call in methods.split(')') {
            let Some((before, handler)) = call.rsplit_once('(') else {
                continue;
            };
            let method = before.trim_start_matches('.');
            if ["get", "post", "patch", "delete", "put"].contains(&method) {
                routes.push((method.to_string(), path.clone(), handler.to_string()));
            }
        }
    }
    routes
}

/// The scope a handler checks: the value of the constant it passes to `principal.require`.
fn scope_checked_by(source: &str, handler: &str) -> String {
    let body = source
        .split(&format!("async fn {handler}("))
        .nth(1)
        .unwrap_or_else(|| panic!("no handler `{handler}`"));
    let constant = body
        .split("principal.require(")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .unwrap_or_else(|| panic!("`{handler}` checks no scope"));
    let value = source
        .split(&format!("pub const {constant}: &str = \""))
        .nth(1)
        .unwrap_or_else(|| panic!("no constant {constant}"));
    value.split('"').next().unwrap().to_string()
}

#[test]
fn a_new_command_has_one_route_whose_router_scope_and_document_agree() {
    let text = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/checkout.toml"))
        .unwrap()
        .replace(
            "[contexts.payments]\n",
            "[contexts.orders.commands.hold]\nfrom = [\"pending\"]\nemits = \"OrderHeld\"\nfields = { note = \"string\" }\n\n[contexts.payments]\n",
        );
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("shop.toml"), &text).unwrap();
    generate(
        dir.path(),
        &[
            "new",
            "shop",
            "--spec",
            "shop.toml",
            "--out",
            "shop",
            "--no-git",
        ],
    );
    let spec = spec::parse(&text, "shop.toml", &Overrides::default()).unwrap();
    let document = archscaffold::openapi::document(&spec);
    let yaml = fs::read_to_string(dir.path().join("shop/docs/openapi.yaml")).unwrap();
    // Below its ownership header, the file written is the model's document.
    let written = yaml
        .split_once('\n')
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    assert!(
        written == archscaffold::openapi::to_yaml(&document),
        "docs/openapi.yaml is not the model's document"
    );

    let mut documented = Vec::new();
    for (path, methods) in document["paths"].as_object().unwrap() {
        if !path.starts_with("/v1/") {
            continue;
        }
        for (method, operation) in methods.as_object().unwrap() {
            let description = operation["description"].as_str().unwrap();
            let scope = description
                .strip_prefix("Needs scope `")
                .and_then(|rest| rest.split('`').next())
                .unwrap_or_else(|| panic!("{method} {path} names no scope: {description}"));
            documented.push((method.clone(), path.clone(), scope.to_string()));
        }
    }
    let mut served = Vec::new();
    for context in ["orders", "payments", "inventory", "shipping"] {
        let source = fs::read_to_string(
            dir.path()
                .join(format!("shop/gateway/src/api/{context}.rs")),
        )
        .unwrap();
        for (method, path, handler) in registered_routes(&source) {
            served.push((method, path, scope_checked_by(&source, &handler)));
        }
    }
    documented.sort();
    served.sort();
    assert_eq!(
        served, documented,
        "the gateway serves what the document describes, with the same scopes"
    );
    assert!(
        served.contains(&(
            "post".into(),
            "/v1/orders/{id}/hold".into(),
            "orders:write".into()
        )),
        "{served:?}"
    );
    assert!(served.contains(&(
        "post".into(),
        "/v1/orders/{id}/sagas/{saga}/retry".into(),
        "orders:admin".into()
    )));
}

#[test]
fn the_readmes_route_table_is_the_route_list() {
    // checkout: payments is read-only (`crud = ["read"]`) with a command; orders has
    // every change, commands and its saga's routes.
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/checkout.toml");
    let spec = spec::load(&path, &Overrides::default()).unwrap();
    let plan = Plan::build(&spec, &Blueprint::embedded().unwrap(), &[]).unwrap();
    let readme = String::from_utf8_lossy(&plan.files["README.md"].contents);
    let rows: Vec<&str> = readme
        .lines()
        .filter(|l| l.starts_with("| `") && l.contains("/v1/"))
        .collect();
    let routes: usize = spec.contexts.iter().map(|c| c.routes.len()).sum();
    assert_eq!(rows.len(), routes, "{rows:#?}");
    for row in [
        "| `PATCH /v1/orders/{id}` | `orders:write` | `updateOrder` |",
        "| `POST /v1/orders/{id}/sagas/{saga}/retry` | `orders:admin` | `retryOrderSaga` |",
        "| `GET /v1/payments/{id}/events` | `payments:read` | `streamPaymentEvents` |",
        "| `POST /v1/payments/{id}/void` | `payments:write` | `voidPayment` |",
    ] {
        assert!(rows.contains(&row), "{row} in {rows:#?}");
    }
    assert!(
        !rows.iter().any(|r| r.starts_with("| `POST /v1/payments`")),
        "{rows:#?}"
    );
}
