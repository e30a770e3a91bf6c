//! `archscaffold.lock`: the generator version, a hash of the spec, and a hash and owner for
//! every generated file, so later `add`, `diff` and `upgrade` commands can tell a file the
//! user edited from one still as generated.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use crate::plan::PlannedFile;

pub const LOCK_FILE: &str = "archscaffold.lock";
/// Bumped when the lock file's layout changes.
pub const LOCK_FORMAT: u32 = 1;

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn render(spec_text: &str, files: &BTreeMap<String, PlannedFile>) -> String {
    let mut out = String::new();
    out.push_str(
        "# archscaffold.lock: what archscaffold generated here. Do not edit; it lets later\n",
    );
    out.push_str(
        "# `add`, `diff` and `upgrade` runs tell a file you changed from one as generated.\n",
    );
    out.push_str(&format!("format = {LOCK_FORMAT}\n"));
    out.push_str(&format!(
        "generator = \"archscaffold {}\"\n",
        crate::VERSION
    ));
    out.push_str(&format!(
        "spec_sha256 = \"{}\"\n\n[files]\n",
        sha256_hex(spec_text.as_bytes())
    ));
    for (path, file) in files {
        out.push_str(&format!(
            "\"{path}\" = {{ owner = \"{}\", sha256 = \"{}\" }}\n",
            file.owner.as_str(),
            sha256_hex(&file.contents)
        ));
    }
    out
}
