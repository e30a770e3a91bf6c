//! The command line as a user meets it: every bad spec or flag gets an exact message,
//! exit code 2 and an untouched directory; good input writes a workspace.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

struct Case {
    name: &'static str,
    args: &'static [&'static str],
    /// Written to `spec.toml` in the working directory before the run.
    spec: Option<&'static str>,
    stderr: &'static str,
}

fn run_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_archscaffold"))
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .output()
        .expect("run archscaffold")
}

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

const CASES: &[Case] = &[
    Case {
        name: "empty context list",
        args: &["new", "shop", "--contexts", ","],
        spec: None,
        stderr: "error: contexts: no bounded contexts given\n  --> --contexts\n  = help: list at least one, e.g. `--contexts orders,billing`",
    },
    Case {
        name: "rust keyword",
        args: &["new", "shop", "--contexts", "orders,type"],
        spec: None,
        stderr: "error: contexts.type: `type` becomes `type`, a Rust keyword\n  --> --contexts\n  = help: rename it, e.g. `types` or `type_context`",
    },
    Case {
        name: "path separator",
        args: &["new", "shop", "--contexts", "orders,a/b"],
        spec: None,
        stderr: "error: contexts.a/b: `a/b` contains a path separator\n  --> --contexts\n  = help: use a plain name such as `orders`: it becomes one directory",
    },
    Case {
        name: "parent directory",
        args: &["new", "shop", "--contexts", ".."],
        spec: None,
        stderr: "error: contexts...: `..` contains `..`, which would escape the workspace\n  --> --contexts\n  = help: use a plain name such as `orders`",
    },
    Case {
        name: "collision after case conversion",
        args: &["new", "shop", "--contexts", "order-items,order_items"],
        spec: None,
        stderr: "error: contexts.order_items: `order_items` collides with `order-items`: both become `order_items`\n  --> --contexts\n  = help: give every context a distinct name",
    },
    Case {
        name: "duplicate context",
        args: &["new", "shop", "--contexts", "orders,billing,orders"],
        spec: None,
        stderr: "error: contexts.orders: `orders` is listed twice\n  --> --contexts\n  = help: give every context a distinct name",
    },
    Case {
        name: "reserved crate name",
        args: &["new", "shop", "--contexts", "orders,gateway"],
        spec: None,
        stderr: "error: contexts.gateway: `gateway` becomes `gateway`, a crate name the generated workspace already uses\n  --> --contexts\n  = help: rename it, e.g. `gateway_context`",
    },
    Case {
        name: "leading digit",
        args: &["new", "shop", "--contexts", "2fa"],
        spec: None,
        stderr: "error: contexts.2fa: `2fa` does not start with a letter\n  --> --contexts\n  = help: start the name with a letter, e.g. `orders_2fa`",
    },
    Case {
        name: "punctuation",
        args: &["new", "shop", "--contexts", "or$ders"],
        spec: None,
        stderr: "error: contexts.or$ders: `or$ders` contains `$`\n  --> --contexts\n  = help: use ASCII letters, digits, `-` and `_` only",
    },
    Case {
        name: "bad system name",
        args: &["new", "my shop", "--contexts", "orders"],
        spec: None,
        stderr: "error: name: `my shop` contains ` `\n  --> <NAME>\n  = help: use ASCII letters, digits, `-` and `_` only",
    },
    Case {
        name: "unknown bus flag",
        args: &["new", "shop", "--contexts", "orders", "--bus", "rabbit"],
        spec: None,
        stderr: "error: invalid value 'rabbit' for '--bus <BUS>'\n  [possible values: kafka, sqs]\n\nFor more information, try '--help'.",
    },
    Case {
        name: "no source of contexts",
        args: &["new", "shop"],
        spec: None,
        stderr: "error: the following required arguments were not provided:\n  <--contexts <A,B,...>|--spec <FILE>|--example <NAME>>\n\nUsage: archscaffold new <--contexts <A,B,...>|--spec <FILE>|--example <NAME>> <NAME>\n\nFor more information, try '--help'.",
    },
    Case {
        name: "spec file missing",
        args: &["new", "shop", "--spec", "missing.toml"],
        spec: None,
        stderr: "cannot read spec `missing.toml`: No such file or directory (os error 2)\n  = help: check the path given to --spec",
    },
    Case {
        name: "toml syntax error",
        args: &["new", "shop", "--spec", "spec.toml"],
        spec: Some("name = \"shop\"\n[contexts.orders\n"),
        stderr: "error: spec: unclosed table, expected `]`\n  --> spec.toml:2:17\n  = help: see the spec reference in the README (section `The spec`)",
    },
    Case {
        name: "unknown key",
        args: &["new", "shop", "--spec", "spec.toml"],
        spec: Some("name = \"shop\"\n\n[contexts.orders]\ncolour = \"red\"\n"),
        stderr: "error: spec: unknown field `colour`, expected one of `aggregate`, `fields`, `publishes`, `subscribes`, `calls`, `slo`, `states`, `crud`, `require_if_match`, `replicas`, `max_replicas`, `commands`\n  --> spec.toml:4:1\n  = help: see the spec reference in the README (section `The spec`)",
    },
    Case {
        name: "slo latency out of range",
        args: &["new", "shop", "--spec", "spec.toml"],
        spec: Some("name = \"shop\"\n[contexts.orders]\nslo = { p99_ms = 0 }\n"),
        stderr: "error: contexts.orders.slo.p99_ms: `0` is out of range for p99_ms\n  --> spec.toml:3:18\n  = help: use a whole number of milliseconds from 1 to 60000",
    },
    Case {
        name: "replicas out of range",
        args: &["new", "shop", "--spec", "spec.toml"],
        spec: Some("name = \"shop\"\n[contexts.orders]\nreplicas = 0\n"),
        stderr: "error: contexts.orders.replicas: `0` is out of range for replicas\n  --> spec.toml:3:12\n  = help: use a whole number from 1 to 10 (how many processes serve this context)",
    },
    Case {
        name: "max_replicas past the connection budget",
        args: &["new", "shop", "--spec", "spec.toml"],
        spec: Some("name = \"shop\"\n[contexts.orders]\nmax_replicas = 40\n"),
        stderr: "error: contexts.orders.max_replicas: 40 replicas with at least 3 connections each would hold more than the 90 connections a service's database is given\n  --> spec.toml:3:16\n  = help: use at most 30 (each replica's pool is 90 / max_replicas), or raise PostgreSQL's max_connections and put a pooler such as PgBouncer in front (docs/adr/0016-*.md)",
    },
    Case {
        name: "max_replicas below replicas",
        args: &["new", "shop", "--spec", "spec.toml"],
        spec: Some("name = \"shop\"\n[contexts.orders]\nreplicas = 4\nmax_replicas = 3\n"),
        stderr: "error: contexts.orders.max_replicas: `3` is fewer than the 4 replicas it runs\n  --> spec.toml:4:16\n  = help: use a whole number from 4 (its `replicas`) to 30",
    },
    Case {
        name: "slo error rate not a percentage",
        args: &["new", "shop", "--spec", "spec.toml"],
        spec: Some("name = \"shop\"\n[contexts.orders.slo]\nerror_rate_percent = 150\n"),
        stderr: "error: contexts.orders.slo.error_rate_percent: `150` is not a share of requests in percent\n  --> spec.toml:3:22\n  = help: use a number above 0 and below 100, e.g. `1.0` for 1 % of requests",
    },
    Case {
        name: "unknown slo key",
        args: &["new", "shop", "--spec", "spec.toml"],
        spec: Some("name = \"shop\"\n[contexts.orders.slo]\np95_ms = 100\n"),
        stderr: "error: spec: unknown field `p95_ms`, expected one of `p99_ms`, `error_rate_percent`, `max_outbox_backlog`, `max_consumer_lag`\n  --> spec.toml:3:1\n  = help: see the spec reference in the README (section `The spec`)",
    },
    Case {
        name: "bus in spec",
        args: &["new", "shop", "--spec", "spec.toml"],
        spec: Some("name = \"shop\"\nbus = \"rabbitmq\"\n[contexts.orders]\n"),
        stderr: "error: bus: `rabbitmq` is not a supported bus\n  --> spec.toml:2:7\n  = help: use `kafka` or `sqs`",
    },
    Case {
        name: "platform from a registry",
        args: &["new", "shop", "--spec", "spec.toml"],
        spec: Some("name = \"shop\"\n[platform]\nsource = \"registry\"\n[contexts.orders]\n"),
        stderr: "error: platform.source: `registry` is not available yet: the platform crate is not published on a registry\n  --> spec.toml:3:10\n  = help: use `source = \"vendored\"` (the default), which copies it into crates/platform",
    },
    Case {
        name: "platform source unknown",
        args: &["new", "shop", "--spec", "spec.toml"],
        spec: Some("name = \"shop\"\n[platform]\nsource = \"git\"\n[contexts.orders]\n"),
        stderr: "error: platform.source: `git` is not a platform source\n  --> spec.toml:3:10\n  = help: use `vendored`",
    },
    Case {
        name: "no contexts in spec",
        args: &["new", "shop", "--spec", "spec.toml"],
        spec: Some("name = \"shop\"\n"),
        stderr: "error: contexts: no bounded contexts are defined\n  --> spec.toml:1:1\n  = help: add at least one `[contexts.<name>]` table, e.g. `[contexts.orders]`",
    },
    Case {
        name: "unknown event",
        args: &["new", "shop", "--spec", "spec.toml"],
        spec: Some(
            "name = \"shop\"\n[contexts.orders]\n[contexts.billing]\nsubscribes = [\"orders.OrderPlaced\"]\n",
        ),
        stderr: "error: contexts.billing.subscribes: `orders.OrderPlaced`: context `orders` does not publish `OrderPlaced`\n  --> spec.toml:4:15\n  = help: use one of its events (OrderCreated, OrderUpdated, OrderDeleted) or add `OrderPlaced` to its `publishes`",
    },
    Case {
        name: "unknown subscribed context",
        args: &["new", "shop", "--spec", "spec.toml"],
        spec: Some("name = \"shop\"\n[contexts.billing]\nsubscribes = [\"orders.OrderCreated\"]\n"),
        stderr: "error: contexts.billing.subscribes: `orders.OrderCreated` refers to an unknown context `orders`\n  --> spec.toml:3:15\n  = help: subscribe to one of: `billing`",
    },
    Case {
        name: "malformed subscription",
        args: &["new", "shop", "--spec", "spec.toml"],
        spec: Some(
            "name = \"shop\"\n[contexts.orders]\n[contexts.billing]\nsubscribes = [\"orders\"]\n",
        ),
        stderr: "error: contexts.billing.subscribes: `orders` is not of the form `<context>.<Event>`\n  --> spec.toml:4:15\n  = help: write the publishing context and the event, e.g. `orders.OrderCreated`",
    },
    Case {
        name: "unknown dependency",
        args: &["new", "shop", "--spec", "spec.toml"],
        spec: Some("name = \"shop\"\n[contexts.orders]\ncalls = [\"payments\"]\n"),
        stderr: "error: contexts.orders.calls: `payments` is not a context of this system\n  --> spec.toml:3:10\n  = help: call one of: `orders`",
    },
    Case {
        name: "cycle of synchronous calls",
        args: &["new", "shop", "--spec", "spec.toml"],
        spec: Some(
            "name = \"shop\"\n[contexts.orders]\ncalls = [\"billing\"]\n[contexts.billing]\ncalls = [\"stock\"]\n[contexts.stock]\ncalls = [\"orders\"]\n",
        ),
        stderr: "error: contexts.stock.calls: synchronous calls form a cycle orders -> billing -> stock -> orders; a call chain adds up its p99s (p99(orders) includes p99(billing) + p99(stock) + p99(orders)), so a cycle has no latency bound\n  --> spec.toml:7:10\n  = help: break the cycle: let one side publish an event and the other `subscribes` to it",
    },
    Case {
        name: "unknown field type",
        args: &["new", "shop", "--spec", "spec.toml"],
        spec: Some("name = \"shop\"\n[contexts.orders]\nfields = { total = \"money\" }\n"),
        stderr: "error: contexts.orders.fields.total: `money` is not a field type\n  --> spec.toml:3:20\n  = help: use one of: string, i64, i32, bool, f64, or `ref:<context>` for the id of another context's aggregate",
    },
    Case {
        name: "reserved field",
        args: &["new", "shop", "--spec", "spec.toml"],
        spec: Some("name = \"shop\"\n[contexts.orders]\nfields = { id = \"string\" }\n"),
        stderr: "error: contexts.orders.fields.id: `id` is generated for every aggregate\n  --> spec.toml:3:12\n  = help: remove it, or rename it, e.g. `external_id`",
    },
    Case {
        name: "event named as a message every contract has",
        args: &["new", "shop", "--spec", "spec.toml"],
        spec: Some("name = \"shop\"\n[contexts.orders]\npublishes = [\"ReplayParkedRequest\"]\n"),
        stderr: "error: contexts.orders.publishes: `ReplayParkedRequest` is a message every service's contract already has\n  --> spec.toml:3:14\n  = help: name what happened, e.g. `OrderCreated`",
    },
    Case {
        name: "field in camelCase",
        args: &["new", "shop", "--spec", "spec.toml"],
        spec: Some("name = \"shop\"\n[contexts.orders]\nfields = { totalCents = \"i64\" }\n"),
        stderr: "error: contexts.orders.fields.totalCents: `totalCents` is not a snake_case field name\n  --> spec.toml:3:12\n  = help: write it in snake_case, e.g. `total_cents`",
    },
    Case {
        name: "aggregate not PascalCase",
        args: &["new", "shop", "--spec", "spec.toml"],
        spec: Some("name = \"shop\"\n[contexts.orders]\naggregate = \"order_line\"\n"),
        stderr: "error: contexts.orders.aggregate: `order_line` is not a PascalCase type name\n  --> spec.toml:3:13\n  = help: write it in PascalCase, e.g. `OrderLine`",
    },
    Case {
        name: "aggregate table clashes with the outbox",
        args: &["new", "shop", "--spec", "spec.toml"],
        spec: Some("name = \"shop\"\n[contexts.orders]\naggregate = \"IdempotencyKey\"\n"),
        stderr: "error: contexts.orders.aggregate: `IdempotencyKey` would be stored in table `idempotency_keys`, which every service already has\n  --> spec.toml:3:13\n  = help: choose another aggregate name",
    },
    Case {
        name: "aggregate whose plural is a keyword",
        args: &["new", "shop", "--spec", "spec.toml"],
        spec: Some("name = \"shop\"\n[contexts.orders]\naggregate = \"A\"\n"),
        stderr: "error: contexts.orders.aggregate: `A` has the plural `as`, a Rust keyword\n  --> spec.toml:3:13\n  = help: rename the context, or set its `aggregate` to a longer name, e.g. `AItem`",
    },
    Case {
        name: "empty publishes",
        args: &["new", "shop", "--spec", "spec.toml"],
        spec: Some("name = \"shop\"\n[contexts.orders]\npublishes = []\n"),
        stderr: "error: contexts.orders.publishes: the list is empty\n  --> spec.toml:3:13\n  = help: name at least one event (the first is emitted on create), e.g. `[\"OrderCreated\"]`, or remove the key for that default",
    },
    Case {
        name: "subscribing to itself",
        args: &["new", "shop", "--spec", "spec.toml"],
        spec: Some("name = \"shop\"\n[contexts.orders]\nsubscribes = [\"orders.OrderCreated\"]\n"),
        stderr: "error: contexts.orders.subscribes: `orders.OrderCreated` subscribes a context to its own event\n  --> spec.toml:3:15\n  = help: handle the change inside the context instead of through the bus",
    },
    Case {
        name: "a command from an unknown state",
        args: &["new", "shop", "--spec", "spec.toml"],
        spec: Some(
            "name = \"shop\"\n[contexts.orders]\nstates = [\"pending\", \"done\"]\n[contexts.orders.commands.finish]\nfrom = [\"open\"]\nto = \"done\"\n",
        ),
        stderr: "error: contexts.orders.commands.finish.from: `open` is not one of the context's states\n  --> spec.toml:5:9\n  = help: use one of: `pending`, `done`",
    },
    Case {
        name: "a command to an unknown state",
        args: &["new", "shop", "--spec", "spec.toml"],
        spec: Some(
            "name = \"shop\"\n[contexts.orders]\nstates = [\"pending\", \"done\"]\n[contexts.orders.commands.finish]\nto = \"finished\"\n[contexts.orders.commands.complete]\nto = \"done\"\n",
        ),
        stderr: "error: contexts.orders.commands.finish.to: `finished` is not one of the context's states\n  --> spec.toml:5:6\n  = help: use one of: `pending`, `done`",
    },
    Case {
        name: "a state without states",
        args: &["new", "shop", "--spec", "spec.toml"],
        spec: Some(
            "name = \"shop\"\n[contexts.orders]\n[contexts.orders.commands.finish]\nto = \"done\"\n",
        ),
        stderr: "error: contexts.orders.commands.finish.to: `done` names a state, but the context declares no `states`\n  --> spec.toml:4:6\n  = help: declare the lifecycle first, e.g. `states = [\"pending\", \"done\"]`",
    },
    Case {
        name: "a state no command reaches",
        args: &["new", "shop", "--spec", "spec.toml"],
        spec: Some(
            "name = \"shop\"\n[contexts.orders]\nstates = [\"pending\", \"confirmed\", \"lost\"]\n[contexts.orders.commands.confirm]\nto = \"confirmed\"\n",
        ),
        stderr: "error: contexts.orders.states: no command moves an Order to `lost`\n  --> spec.toml:3:35\n  = help: add a command with `to = \"lost\"`, or remove the state",
    },
    Case {
        name: "a command setting an unknown field",
        args: &["new", "shop", "--spec", "spec.toml"],
        spec: Some(
            "name = \"shop\"\n[contexts.orders]\nfields = { note = \"string\" }\n[contexts.orders.commands.rename]\nset = [\"title\"]\nemits = \"OrderRenamed\"\n",
        ),
        stderr: "error: contexts.orders.commands.rename.set: `title` is not a field of Order\n  --> spec.toml:5:8\n  = help: set one of: `note`",
    },
    Case {
        name: "a command setting a link field",
        args: &["new", "shop", "--spec", "spec.toml"],
        spec: Some(
            "name = \"shop\"\n[contexts.orders]\n[contexts.billing]\nsubscribes = [\"orders.OrderCreated\"]\n[contexts.billing.commands.relink]\nset = [\"order_id\"]\nemits = \"BillingRelinked\"\n",
        ),
        stderr: "error: contexts.billing.commands.relink.set: `order_id` links to another context's aggregate and never changes after create\n  --> spec.toml:6:8\n  = help: remove it from `set`",
    },
    Case {
        name: "a command named like a generated RPC",
        args: &["new", "shop", "--spec", "spec.toml"],
        spec: Some(
            "name = \"shop\"\n[contexts.orders]\nfields = { note = \"string\" }\n[contexts.orders.commands.update]\nset = [\"note\"]\nemits = \"OrderNoted\"\n",
        ),
        stderr: "error: contexts.orders.commands.update: command `update` would be the RPC `UpdateOrder`, which every aggregate already has\n  --> spec.toml:4:27\n  = help: name what the command does in the domain, e.g. `confirm` or `cancel`",
    },
    Case {
        name: "commands that collide after case conversion",
        args: &["new", "shop", "--spec", "spec.toml"],
        spec: Some(
            "name = \"shop\"\n[contexts.orders]\nstates = [\"open\", \"shut\"]\n[contexts.orders.commands.close_2]\nto = \"shut\"\n[contexts.orders.commands.close2]\nto = \"shut\"\nemits = \"OrderClosedAgain\"\n",
        ),
        stderr: "error: contexts.orders.commands.close2: `close_2` and `close2` both become the RPC `Close2Order`\n  --> spec.toml:6:27\n  = help: give every command a distinct name",
    },
    Case {
        name: "emits colliding with a generated event",
        args: &["new", "shop", "--spec", "spec.toml"],
        spec: Some(
            "name = \"shop\"\n[contexts.orders]\nfields = { note = \"string\" }\n[contexts.orders.commands.touch]\nset = [\"note\"]\nemits = \"OrderUpdated\"\n",
        ),
        stderr: "error: contexts.orders.commands.touch.emits: event `OrderUpdated` is already emitted by an update\n  --> spec.toml:6:9\n  = help: give this command an event of its own with `emits`, named in the past tense",
    },
    Case {
        name: "crud outside the four",
        args: &["new", "shop", "--spec", "spec.toml"],
        spec: Some("name = \"shop\"\n[contexts.orders]\ncrud = [\"read\", \"upsert\"]\n"),
        stderr: "error: contexts.orders.crud: `upsert` is not a generated operation\n  --> spec.toml:3:17\n  = help: use any of: create, read, update, delete",
    },
    Case {
        name: "crud without read",
        args: &["new", "shop", "--spec", "spec.toml"],
        spec: Some("name = \"shop\"\n[contexts.orders]\ncrud = [\"create\"]\n"),
        stderr: "error: contexts.orders.crud: `read` is missing: every resource can be read (its ETag, the cache and the events are built on reads)\n  --> spec.toml:3:8\n  = help: add `\"read\"` to the list",
    },
    Case {
        name: "a ref to an unknown context",
        args: &["new", "shop", "--spec", "spec.toml"],
        spec: Some(
            "name = \"shop\"\n[contexts.checkout]\nfields = { item_id = \"ref:catalog\" }\n",
        ),
        stderr: "error: contexts.checkout.fields.item_id: `ref:catalog` refers to an unknown context\n  --> spec.toml:3:22\n  = help: refer to one of: `checkout`",
    },
    Case {
        name: "a ref to the context itself",
        args: &["new", "shop", "--spec", "spec.toml"],
        spec: Some(
            "name = \"shop\"\n[contexts.catalog]\nfields = { parent_id = \"ref:catalog\" }\n",
        ),
        stderr: "error: contexts.catalog.fields.parent_id: `ref:catalog` refers to the context itself\n  --> spec.toml:3:24\n  = help: an aggregate refers to others of its own kind by a plain `string` field",
    },
    Case {
        name: "refs that close a cycle of synchronous calls",
        args: &["new", "shop", "--spec", "spec.toml"],
        spec: Some(
            "name = \"shop\"\n[contexts.catalog]\ncalls = [\"checkout\"]\n[contexts.checkout]\nfields = { item_id = \"ref:catalog\" }\n",
        ),
        stderr: "error: contexts.checkout.calls: synchronous calls form a cycle catalog -> checkout -> catalog; a call chain adds up its p99s (p99(catalog) includes p99(checkout) + p99(catalog)), so a cycle has no latency bound\n  --> spec.toml:5:22\n  = help: break the cycle: let one side publish an event and the other `subscribes` to it",
    },
    Case {
        name: "validate reports several problems at once",
        args: &["validate", "--spec", "spec.toml"],
        spec: Some(
            "name = \"shop\"\nbus = \"nats\"\n[contexts.self]\n[contexts.orders]\ncalls = [\"orders\"]\n",
        ),
        stderr: "error: bus: `nats` is not a supported bus\n  --> spec.toml:2:7\n  = help: use `kafka` or `sqs`\nerror: contexts.self: `self` becomes `self`, a Rust keyword\n  --> spec.toml:3:11\n  = help: rename it, e.g. `selfs` or `self_context`\nerror: contexts.orders.calls: `orders` calls itself\n  --> spec.toml:5:10\n  = help: remove it: a context calls its own code directly\n3 problems found; nothing was written",
    },
];

#[test]
fn every_bad_spec_or_flag_gets_its_exact_message_exit_2_and_writes_nothing() {
    let mut failures = Vec::new();
    for case in CASES {
        let dir = tempfile::tempdir().unwrap();
        if let Some(spec) = case.spec {
            fs::write(dir.path().join("spec.toml"), spec).unwrap();
        }
        let before = listing(dir.path());
        let out = run_in(dir.path(), case.args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.code() != Some(2) {
            failures.push(format!("{}: exit {:?}", case.name, out.status.code()));
        }
        if stderr.trim_end() != case.stderr {
            failures.push(format!(
                "{}:\n--- expected\n{}\n--- got\n{}",
                case.name,
                case.stderr,
                stderr.trim_end()
            ));
        }
        if listing(dir.path()) != before {
            failures.push(format!("{}: wrote {:?}", case.name, listing(dir.path())));
        }
    }
    assert!(CASES.len() >= 15);
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn a_non_empty_target_is_refused_without_force_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("shop");
    fs::create_dir(&target).unwrap();
    fs::write(target.join("notes.txt"), "mine").unwrap();

    let out = run_in(dir.path(), &["new", "shop", "--contexts", "orders"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim_end(),
        "target `shop` exists and is not empty\n  = help: choose another directory with --out, or pass --force to write the generated files over it (files you own are kept); to bring an existing workspace to a new spec or version, run `archscaffold update` in it"
    );
    assert_eq!(listing(&target), ["notes.txt"]);
    assert_eq!(
        listing(dir.path()),
        ["shop"],
        "no staging directory left behind"
    );

    let forced = run_in(
        dir.path(),
        &["new", "shop", "--contexts", "orders", "--force", "--no-git"],
    );
    assert!(
        forced.status.success(),
        "{}",
        String::from_utf8_lossy(&forced.stderr)
    );
    assert_eq!(
        fs::read_to_string(target.join("notes.txt")).unwrap(),
        "mine"
    );
    assert!(target.join("services/orders/src/main.rs").is_file());
}

#[test]
fn a_file_in_the_way_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("shop"), "a file").unwrap();
    let out = run_in(dir.path(), &["new", "shop", "--contexts", "orders"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .starts_with("target `shop` exists and is not a directory")
    );
}

#[test]
fn dry_run_lists_the_tree_with_owners_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_in(
        dir.path(),
        &["new", "shop", "--contexts", "orders,billing", "--dry-run"],
    );
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("shop/  (dry run: "), "{stdout}");
    assert!(stdout.contains("services/billing/src/domain/rules.rs"));
    let rules = stdout
        .lines()
        .find(|l| l.contains("orders/src/domain/rules.rs"))
        .unwrap();
    assert!(rules.trim_end().ends_with("user"), "{rules}");
    let grpc = stdout
        .lines()
        .find(|l| l.contains("orders/src/grpc.rs"))
        .unwrap();
    assert!(grpc.trim_end().ends_with("generator"), "{grpc}");
    assert!(listing(dir.path()).is_empty());
}

#[test]
fn validate_accepts_a_good_spec_and_summarises_it() {
    let spec = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/specs/rich.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_archscaffold"))
        .args(["validate", "--spec"])
        .arg(&spec)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(
            "valid; system `market`, bus sqs, 3 contexts: catalog, order-items, shipping"
        ),
        "{stdout}"
    );
}

#[test]
fn help_shows_examples_and_completions_are_printed() {
    let dir = tempfile::tempdir().unwrap();
    let help = run_in(dir.path(), &["new", "--help"]);
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(
        text.contains("archscaffold new shop --contexts orders,billing"),
        "{text}"
    );
    let completions = run_in(dir.path(), &["completions", "bash"]);
    assert!(completions.status.success());
    assert!(String::from_utf8_lossy(&completions.stdout).contains("archscaffold"));
}

#[test]
fn a_bundled_example_is_generated_under_the_given_name() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_in(
        dir.path(),
        &[
            "new",
            "store",
            "--example",
            "shop",
            "--bus",
            "sqs",
            "--no-git",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let spec = fs::read_to_string(dir.path().join("store/archscaffold.toml")).unwrap();
    assert!(spec.contains("name = \"store\"\nbus = \"sqs\"\n"), "{spec}");
    assert!(
        spec.contains("states = [\"pending\", \"confirmed\", \"cancelled\"]"),
        "{spec}"
    );
    assert!(spec.contains("[contexts.orders.commands.cancel]"), "{spec}");
    assert!(
        dir.path()
            .join("store/services/billing/src/domain/mod.rs")
            .is_file()
    );

    let both = run_in(
        dir.path(),
        &["new", "x", "--example", "shop", "--contexts", "orders"],
    );
    assert_eq!(both.status.code(), Some(2), "one source of the spec only");
}
