//! The blueprints are embedded with `include_dir`, which cannot tell cargo about files
//! added or removed on stable Rust; watching the folder makes any change rebuild the binary.

fn main() {
    println!("cargo:rerun-if-changed=blueprints");
}
