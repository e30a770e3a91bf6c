//! The chassis: the `platform` crate every generated service and gateway depends on. It
//! lives in this repository as a crate of our own workspace (`blueprints/platform`), with
//! its own version, and a generated workspace vendors it whole at `crates/platform`: not
//! generated code (no ownership headers, no copy in the merge base), but a dependency,
//! recorded in the lock by version and the hash of each file and of the whole tree.
//! `update` replaces it whole when the tree changes, and never over edits the user made
//! to it without `--discard-platform-edits`.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use crate::error::{Error, Result};
use crate::layout::VENDORED_PLATFORM;
use crate::lock::sha256_hex;

/// The crate as this archscaffold ships it.
#[derive(Debug, Clone)]
pub struct Chassis {
    /// `[package] version` of its Cargo.toml.
    pub version: String,
    /// Paths relative to the crate's root, `/`-separated, sorted.
    pub files: BTreeMap<String, Vec<u8>>,
}

/// What a lock records of a vendored platform: enough to tell an edit from the crate as
/// shipped, and which files it touched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub version: String,
    pub tree_sha256: String,
    /// Each file's hash, by its path inside the crate.
    pub files: BTreeMap<String, String>,
}

/// How a file of the vendored crate differs from what archscaffold put there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edit {
    Changed,
    Added,
    Deleted,
}

impl Edit {
    pub fn label(self) -> &'static str {
        match self {
            Edit::Changed => "changed",
            Edit::Added => "added",
            Edit::Deleted => "deleted",
        }
    }
}

/// Appended to the vendored crate's Cargo.toml. Excluded from the generated workspace's
/// members, the crate would otherwise look further up for a workspace to belong to, and
/// fail inside any directory that has one (a monorepo, or this repository's `.work/`).
pub const OWN_WORKSPACE: &str = "\n# Vendored by archscaffold: a workspace of its own, so that it builds as a dependency\n# wherever the workspace that uses it sits.\n[workspace]\n";

impl Chassis {
    /// The crate from a blueprint's vendored folder, as a workspace vendors it; its
    /// version comes from its manifest.
    pub fn new(mut files: BTreeMap<String, Vec<u8>>, origin: &str) -> Result<Chassis> {
        let manifest = files.get_mut("Cargo.toml").ok_or_else(|| {
            Error::Blueprint(format!("{origin}: the vendored platform has no Cargo.toml"))
        })?;
        manifest.extend_from_slice(OWN_WORKSPACE.as_bytes());
        let version = package_version(&String::from_utf8_lossy(manifest)).ok_or_else(|| {
            Error::Blueprint(format!(
                "{origin}: the vendored platform's Cargo.toml has no `[package] version = \"x.y.z\"`"
            ))
        })?;
        Ok(Chassis { version, files })
    }

    pub fn recorded(&self) -> Recorded {
        Recorded::of(&self.files)
    }
}

impl Recorded {
    pub fn of(files: &BTreeMap<String, Vec<u8>>) -> Recorded {
        let hashes: BTreeMap<String, String> = files
            .iter()
            .map(|(path, bytes)| (path.clone(), sha256_hex(bytes)))
            .collect();
        let version = files
            .get("Cargo.toml")
            .and_then(|m| package_version(&String::from_utf8_lossy(m)))
            .unwrap_or_default();
        Recorded::from_hashes(version, hashes)
    }

    /// A tree known by its files' hashes; its own hash follows from them.
    pub fn from_hashes(version: String, files: BTreeMap<String, String>) -> Recorded {
        Recorded {
            version,
            tree_sha256: tree_hash(&files),
            files,
        }
    }

    /// The files of `on_disk` that are not as recorded here, in path order.
    pub fn edits(&self, on_disk: &Recorded) -> Vec<(String, Edit)> {
        let mut edits = Vec::new();
        for (path, sha) in &self.files {
            match on_disk.files.get(path) {
                None => edits.push((path.clone(), Edit::Deleted)),
                Some(found) if found != sha => edits.push((path.clone(), Edit::Changed)),
                Some(_) => {}
            }
        }
        for path in on_disk.files.keys() {
            if !self.files.contains_key(path) {
                edits.push((path.clone(), Edit::Added));
            }
        }
        edits.sort_by(|a, b| a.0.cmp(&b.0));
        edits
    }
}

/// One hash for the whole tree: over each file's path and hash, in path order.
fn tree_hash(hashes: &BTreeMap<String, String>) -> String {
    let listing: String = hashes
        .iter()
        .map(|(path, sha)| format!("{sha}  {path}\n"))
        .collect();
    sha256_hex(listing.as_bytes())
}

/// The vendored crate's files in a workspace, by path inside it. What cargo leaves when
/// someone builds the crate on its own (`target/`, `Cargo.lock`) is not part of it.
pub fn on_disk(root: &Path) -> Result<BTreeMap<String, Vec<u8>>> {
    let dir = root.join(VENDORED_PLATFORM);
    let mut files = BTreeMap::new();
    if !dir.is_dir() {
        return Ok(files);
    }
    let mut stack = vec![dir.clone()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).map_err(Error::io(&d))? {
            let path = entry.map_err(Error::io(&d))?.path();
            let rel = path
                .strip_prefix(&dir)
                .expect("walked from the crate's root")
                .to_string_lossy()
                .replace('\\', "/");
            if rel == "target" || rel == "Cargo.lock" {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else {
                files.insert(rel, fs::read(&path).map_err(Error::io(&path))?);
            }
        }
    }
    Ok(files)
}

/// `version = "..."` of a Cargo.toml's `[package]` table.
fn package_version(manifest: &str) -> Option<String> {
    let value: toml::Table = toml::from_str(manifest).ok()?;
    value
        .get("package")?
        .get("version")?
        .as_str()
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(entries: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
        entries
            .iter()
            .map(|(p, c)| (p.to_string(), c.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn edits_name_each_changed_added_and_deleted_file() {
        let shipped = files(&[
            ("Cargo.toml", "[package]\nversion = \"1.2.3\"\n"),
            ("src/lib.rs", "pub mod a;\n"),
            ("src/a.rs", "pub fn a() {}\n"),
        ]);
        let recorded = Recorded::of(&shipped);
        assert_eq!(recorded.version, "1.2.3");
        assert!(recorded.edits(&Recorded::of(&shipped)).is_empty());
        let mut disk = shipped.clone();
        disk.insert("src/a.rs".into(), b"pub fn a() { ours() }\n".to_vec());
        disk.insert("src/ours.rs".into(), b"\n".to_vec());
        disk.remove("src/lib.rs");
        assert_eq!(
            recorded.edits(&Recorded::of(&disk)),
            [
                ("src/a.rs".to_string(), Edit::Changed),
                ("src/lib.rs".to_string(), Edit::Deleted),
                ("src/ours.rs".to_string(), Edit::Added),
            ]
        );
    }

    #[test]
    fn the_tree_hash_moves_with_any_file_and_any_path() {
        let a = Recorded::of(&files(&[("src/a.rs", "x"), ("src/b.rs", "y")]));
        let renamed = Recorded::of(&files(&[("src/a.rs", "x"), ("src/c.rs", "y")]));
        let edited = Recorded::of(&files(&[("src/a.rs", "x"), ("src/b.rs", "z")]));
        assert_ne!(a.tree_sha256, renamed.tree_sha256);
        assert_ne!(a.tree_sha256, edited.tree_sha256);
        assert_eq!(
            a.tree_sha256,
            Recorded::of(&files(&[("src/b.rs", "y"), ("src/a.rs", "x")])).tree_sha256
        );
    }
}
