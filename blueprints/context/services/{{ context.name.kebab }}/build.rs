//! `infra::migrator` embeds `migrations/` when the crate compiles, but cargo does not know
//! the macro read that folder: without this, a new migration file (yours, or one that
//! `archscaffold update` added) would not reach the binary until something else changed.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
