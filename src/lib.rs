//! archscaffold: turns a bounded-context spec into a multi-service Rust workspace.
//!
//! The pipeline is `cli` → `spec` → `blueprint` → `render` → `plan` (with
//! `format`, rustfmt over the Rust files) → `write`; every step but the last is free of
//! side effects on the target, so the whole output can be inspected in memory (see `--dry-run`).
//! `update` renders an existing workspace's spec the same way and merges the result into
//! it three ways (`base` keeps what was generated last, `merge` merges one file,
//! `migrations` keeps applied migrations unchanged). `team_template` renders a team's own
//! templates through cargo-generate; their files join the plan like the blueprint's.

pub mod base;
pub mod blueprint;
pub mod cli;
pub mod error;
pub mod format;
pub mod git_pack;
pub mod hex;
pub mod inflect;
pub mod layout;
pub mod lock;
pub mod merge;
pub mod migrations;
pub mod openapi;
pub mod ownership;
pub mod plan;
pub mod platform;
pub mod render;
pub mod saga_steps;
pub mod spec;
pub mod tags;
pub mod team_template;
pub mod update;
pub mod write;

/// The generator's version, recorded in every generated header and in `archscaffold.lock`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
