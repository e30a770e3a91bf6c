//! Formats the planned Rust files with rustfmt, in one process for the whole plan.
//!
//! rustfmt's layout depends on name lengths and import order, so no template can be
//! rustfmt-clean for every spec; formatting the output is what makes `cargo fmt --check`
//! pass in every generated workspace. The files go through a temporary tree (rustfmt
//! follows `mod` declarations, so the layout is kept) and come back into the plan before
//! the lock file hashes them. The bytes depend on the rustfmt version; with no rustfmt
//! on the machine the code is left as rendered, which still builds.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::error::{Error, Result};
use crate::plan::PlannedFile;

/// The edition the generated workspace declares; rustfmt's style follows it.
const EDITION: &str = "2024";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Formatted {
    Yes,
    /// No rustfmt could be run; the files are as rendered.
    RustfmtMissing,
}

/// Removes the temporary tree however formatting ends.
struct TempTree(PathBuf);

impl Drop for TempTree {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

pub fn rust_files(files: &mut BTreeMap<String, PlannedFile>) -> Result<Formatted> {
    let paths: Vec<String> = files
        .keys()
        .filter(|p| p.ends_with(".rs"))
        .cloned()
        .collect();
    if paths.is_empty() {
        return Ok(Formatted::Yes);
    }
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let root = std::env::temp_dir().join(format!(
        "archscaffold-fmt-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let tree = TempTree(root.clone());
    for path in &paths {
        let dest = root.join(path);
        fs::create_dir_all(dest.parent().expect("a file has a parent"))
            .map_err(Error::io(&dest))?;
        fs::write(&dest, &files[path].contents).map_err(Error::io(&dest))?;
    }
    let rustfmt = std::env::var_os("RUSTFMT").unwrap_or_else(|| "rustfmt".into());
    let output = Command::new(&rustfmt)
        .args(["--edition", EDITION, "--quiet"])
        .args(paths.iter().map(|p| root.join(p)))
        .output();
    let output = match output {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Formatted::RustfmtMissing),
        Err(e) => return Err(Error::Blueprint(format!("cannot run rustfmt: {e}"))),
    };
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr).replace(&*root.to_string_lossy(), "");
        return Err(Error::Blueprint(format!(
            "the rendered Rust does not parse (a blueprint bug):\n{stderr}"
        )));
    }
    for path in &paths {
        let src = root.join(path);
        let formatted = fs::read(&src).map_err(Error::io(&src))?;
        files.get_mut(path).expect("planned").contents = formatted;
    }
    drop(tree);
    Ok(Formatted::Yes)
}
