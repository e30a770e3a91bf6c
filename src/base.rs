//! The merge base: exactly what archscaffold generated last time, byte for byte, kept in
//! the workspace under `.archscaffold/base/` (ADR 0010 in the generated docs says why a
//! folder and not a git ref). `update` merges three ways against it, so it never needs the
//! old generator, nor the rustfmt that formatted the old output.
//!
//! A workspace generated before the folder existed has only its lock's hashes. A file
//! whose bytes still match its hash is its own base; for an edited one, the base is
//! looked up in the workspace's git history (the first commit of a generated repository
//! holds every file as generated).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::layout::{BASE_DIR, LOCK_FILE};
use crate::lock::{Lock, sha256_hex};
use crate::plan::Plan;

/// Keeps the base out of diffs and code review: it changes only with generated files.
const ATTRIBUTES_PATH: &str = ".archscaffold/.gitattributes";
const ATTRIBUTES: &str = "# The files as archscaffold last generated them: the base of `archscaffold update`'s\n# three-way merges. Written only by archscaffold; diffs are left out of reviews.\n** -diff linguist-generated=true\n";
/// How far back the history is searched for a format-1 workspace's generated files.
const HISTORY_LIMIT: usize = 2000;

/// What archscaffold generated last time, as far as it can be found: path -> bytes.
#[derive(Debug, Default)]
pub struct Base {
    pub files: BTreeMap<String, Vec<u8>>,
}

impl Base {
    pub fn get(&self, path: &str) -> Option<&[u8]> {
        self.files.get(path).map(Vec::as_slice)
    }

    /// The file as last generated, or as it is on disk when that is unknown.
    pub fn or_disk(&self, root: &Path, path: &str) -> Option<Vec<u8>> {
        self.get(path)
            .map(<[u8]>::to_vec)
            .or_else(|| fs::read(root.join(path)).ok())
    }
}

/// The base folder's files for a plan: every pristine file, plus the attributes file.
pub fn entries(plan: &Plan) -> impl Iterator<Item = (String, &[u8])> {
    plan.pristine()
        .map(|(path, file)| (format!("{BASE_DIR}/{path}"), file.contents.as_slice()))
        .chain(std::iter::once((
            ATTRIBUTES_PATH.to_string(),
            ATTRIBUTES.as_bytes(),
        )))
}

/// Finds the bytes as generated of every file the lock lists (but the lock itself).
pub fn load(root: &Path, lock: &Lock) -> Base {
    let mut base = Base::default();
    let mut wanted = BTreeMap::new();
    for (path, locked) in &lock.files {
        if path == LOCK_FILE {
            continue;
        }
        let matches = |b: &Vec<u8>| sha256_hex(b) == locked.sha256;
        let found = fs::read(root.join(BASE_DIR).join(path))
            .ok()
            .filter(matches)
            .or_else(|| fs::read(root.join(path)).ok().filter(matches));
        match found {
            Some(bytes) => {
                base.files.insert(path.clone(), bytes);
            }
            None => {
                wanted.insert(path.clone(), locked.sha256.clone());
            }
        }
    }
    if !wanted.is_empty() {
        base.files.extend(from_history(root, &wanted));
    }
    base
}

/// Searches the commits reachable from HEAD for each wanted path at the wanted hash.
fn from_history(root: &Path, wanted: &BTreeMap<String, String>) -> BTreeMap<String, Vec<u8>> {
    let mut found = BTreeMap::new();
    let Ok(repo) = git2::Repository::discover(root) else {
        return found;
    };
    let Some(prefix) = repo_prefix(&repo, root) else {
        return found;
    };
    let Ok(mut walk) = repo.revwalk() else {
        return found;
    };
    if walk.push_head().is_err() {
        return found;
    }
    for oid in walk.take(HISTORY_LIMIT).flatten() {
        let Ok(tree) = repo.find_commit(oid).and_then(|c| c.tree()) else {
            continue;
        };
        for (path, sha) in wanted {
            if found.contains_key(path) {
                continue;
            }
            let Ok(entry) = tree.get_path(&prefix.join(path)) else {
                continue;
            };
            if let Ok(blob) = repo.find_blob(entry.id())
                && sha256_hex(blob.content()) == *sha
            {
                found.insert(path.clone(), blob.content().to_vec());
            }
        }
        if found.len() == wanted.len() {
            break;
        }
    }
    found
}

/// The workspace root's path inside the repository's work tree.
pub(crate) fn repo_prefix(repo: &git2::Repository, root: &Path) -> Option<PathBuf> {
    let workdir = repo.workdir()?.canonicalize().ok()?;
    let root = root.canonicalize().ok()?;
    root.strip_prefix(&workdir).ok().map(Path::to_path_buf)
}

/// Replaces the base folder with the plan's pristine files.
pub fn store(root: &Path, plan: &Plan) -> Result<()> {
    let dir = root.join(BASE_DIR);
    let fresh = root.join(format!("{BASE_DIR}.new"));
    if fresh.exists() {
        fs::remove_dir_all(&fresh).map_err(Error::io(&fresh))?;
    }
    for (path, contents) in entries(plan) {
        let dest = match path.strip_prefix(BASE_DIR) {
            Some(rest) => fresh.join(rest.trim_start_matches('/')),
            None => root.join(&path),
        };
        crate::write::write_file(&dest, contents)?;
    }
    if dir.exists() {
        fs::remove_dir_all(&dir).map_err(Error::io(&dir))?;
    }
    fs::rename(&fresh, &dir).map_err(Error::io(&dir))
}
