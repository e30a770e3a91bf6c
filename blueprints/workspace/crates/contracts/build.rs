//! Compiles every `.proto` under the workspace's `proto/` with protox (no protoc binary
//! needed) and generates prost messages plus tonic clients and servers.

use std::path::{Path, PathBuf};

/// Relative to this crate: Cargo runs build scripts from the package root. The paths
/// printed for `rerun-if-changed` must stay relative too. Cargo gives a workspace member
/// the same build hash whichever directory the workspace lives in, so two generated
/// workspaces sharing one CARGO_TARGET_DIR share this script's output; with absolute
/// paths the second workspace would see the first one's unchanged protos and reuse its
/// generated code. Relative paths point into the workspace being built.
const PROTO_DIR: &str = "../../proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new(PROTO_DIR);
    let mut files = Vec::new();
    collect_protos(root, &mut files)?;
    files.sort();
    // tonic-prost-build does not print these itself; without them edits to a proto
    // would not trigger a rebuild.
    println!("cargo:rerun-if-changed={}", root.display());
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    let descriptors = protox::compile(&files, [root])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}

fn collect_protos(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            println!("cargo:rerun-if-changed={}", path.display());
            collect_protos(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "proto") {
            out.push(path);
        }
    }
    Ok(())
}
