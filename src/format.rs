//! Formats the planned Rust files with rustfmt, in one process for the whole plan.
//!
//! rustfmt's layout depends on name lengths and import order, so no template can be
//! rustfmt-clean for every spec; formatting the output is what makes `cargo fmt --check`
//! pass in every generated workspace. The files go through a temporary tree (rustfmt
//! follows `mod` declarations, so the layout is kept) and come back into the plan before
//! the lock file hashes them. The bytes depend on the rustfmt version; with no rustfmt
//! on the machine the code is left as rendered, which still builds.
//!
//! rustfmt is most of what generating costs, and it formats the same text again and again:
//! an `update` renders every file of a workspace to change a few, and a team generates the
//! same services many times. So what it made is kept in a cache (see [`FormatCache`]),
//! by the text it was given and its version, and only crates with a file the cache lacks
//! are formatted.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::ownership::PlannedFile;

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
    rust_files_cached_in(files, FormatCache::dir())
}

/// [`rust_files`] with the cache in `cache_dir` (none: no cache).
fn rust_files_cached_in(
    files: &mut BTreeMap<String, PlannedFile>,
    cache_dir: Option<PathBuf>,
) -> Result<Formatted> {
    let paths: Vec<String> = files
        .keys()
        .filter(|p| p.ends_with(".rs"))
        .cloned()
        .collect();
    if paths.is_empty() {
        return Ok(Formatted::Yes);
    }
    let rustfmt = std::env::var_os("RUSTFMT").unwrap_or_else(|| "rustfmt".into());
    let Some(version) = rustfmt_version(&rustfmt)? else {
        return Ok(Formatted::RustfmtMissing);
    };
    let cache = cache_dir.map(|dir| FormatCache { dir, version });
    let mut from_cache = BTreeMap::new();
    for path in &paths {
        if let Some(formatted) = cache.as_ref().and_then(|c| c.get(&files[path].contents)) {
            from_cache.insert(path.clone(), formatted);
        }
    }
    // Only crates with a file the cache lacks go to rustfmt, and all of such a crate,
    // since rustfmt formats a root's modules with it.
    let dirty: Vec<Root> = crate_roots(files, &paths)
        .into_iter()
        .filter(|root| root.members.iter().any(|m| !from_cache.contains_key(m)))
        .collect();
    let formatted = run_rustfmt(&rustfmt, files, &dirty)?;
    for (path, text) in &formatted {
        if let Some(cache) = &cache {
            cache.put(&files[path].contents, text);
        }
    }
    for (path, text) in formatted.into_iter().chain(from_cache) {
        files.get_mut(&path).expect("planned").contents = text;
    }
    Ok(Formatted::Yes)
}

/// `rustfmt --version`, the cache's key beside the text; None when there is no rustfmt.
fn rustfmt_version(rustfmt: &OsString) -> Result<Option<String>> {
    match Command::new(rustfmt)
        .arg("--version")
        .stderr(Stdio::null())
        .output()
    {
        Ok(output) if output.status.success() => Ok(Some(
            String::from_utf8_lossy(&output.stdout).trim().to_string(),
        )),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::Blueprint(format!("cannot run rustfmt: {e}"))),
    }
}

/// The package directory a Rust file belongs to: what comes before its `src/`, `tests/`,
/// `benches/` or `examples/` directory, or its `build.rs`.
fn package_of(path: &str) -> &str {
    let mut end = 0;
    for part in path.split('/') {
        if matches!(part, "src" | "tests" | "benches" | "examples" | "build.rs") {
            return path[..end].trim_end_matches('/');
        }
        end += part.len() + 1;
    }
    path.rsplit_once('/').map_or("", |(dir, _)| dir)
}

/// Formats the crates of `roots` in a temporary tree, one rustfmt per core; returns every
/// member file formatted.
fn run_rustfmt(
    rustfmt: &OsString,
    files: &BTreeMap<String, PlannedFile>,
    roots: &[Root],
) -> Result<BTreeMap<String, Vec<u8>>> {
    if roots.is_empty() {
        return Ok(BTreeMap::new());
    }
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let root = std::env::temp_dir().join(format!(
        "archscaffold-fmt-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let tree = TempTree(root.clone());
    let members: Vec<&String> = roots.iter().flat_map(|r| &r.members).collect();
    // rustfmt resolves a root's `mod` declarations on disk, and a declaration `crate_roots`
    // did not recognise (a test crate's shared module) makes its file a root of its own,
    // perhaps one the cache had: so every Rust file of each package with a dirty root goes
    // into the tree, not only the dirty roots' members.
    let packages: BTreeSet<&str> = roots.iter().map(|r| package_of(&r.path)).collect();
    let in_tree: Vec<&String> = files
        .keys()
        .filter(|p| p.ends_with(".rs") && packages.contains(package_of(p)))
        .collect();
    for path in &in_tree {
        let dest = root.join(path);
        fs::create_dir_all(dest.parent().expect("a file has a parent"))
            .map_err(Error::io(&dest))?;
        fs::write(&dest, &files[*path].contents).map_err(Error::io(&dest))?;
    }
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut running = Vec::new();
    for group in balanced_groups(roots, workers) {
        let child = Command::new(rustfmt)
            .args(["--edition", EDITION, "--quiet"])
            .args(group.iter().map(|p| root.join(p)))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::Blueprint(format!("cannot run rustfmt: {e}")))?;
        running.push(child);
    }
    let mut failures = String::new();
    for child in running {
        let output = child
            .wait_with_output()
            .map_err(|e| Error::Blueprint(format!("cannot run rustfmt: {e}")))?;
        if !output.status.success() {
            failures.push_str(&String::from_utf8_lossy(&output.stderr));
        }
    }
    if !failures.is_empty() {
        let stderr = failures.replace(&*root.to_string_lossy(), "");
        return Err(Error::Blueprint(format!(
            "the rendered Rust does not parse (a blueprint bug):\n{stderr}"
        )));
    }
    let mut formatted = BTreeMap::new();
    for path in members {
        let src = root.join(path);
        formatted.insert(path.clone(), fs::read(&src).map_err(Error::io(&src))?);
    }
    drop(tree);
    Ok(formatted)
}

/// What rustfmt made of a file before, by the SHA-256 of its version and the file's text:
/// one file per entry under `$ARCHSCAFFOLD_CACHE_DIR` (else `$XDG_CACHE_HOME/archscaffold`,
/// else `~/.cache/archscaffold`), in `rustfmt/`. rustfmt formats a file the same wherever
/// it sits in a crate, so an entry holds wherever the text comes again. Entries are written
/// whole (through a temporary file), and an entry that cannot be read or written is only a
/// miss: the cache never fails a generation. Deleting the directory is always safe.
pub struct FormatCache {
    dir: PathBuf,
    version: String,
}

impl FormatCache {
    /// Where the cache lives; None when there is no place for it (no home directory) or
    /// `ARCHSCAFFOLD_CACHE_DIR` is set empty, which turns it off.
    pub fn dir() -> Option<PathBuf> {
        let base = match std::env::var_os("ARCHSCAFFOLD_CACHE_DIR") {
            Some(dir) if dir.is_empty() => return None,
            Some(dir) => PathBuf::from(dir),
            None => match std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
                Some(dir) => Path::new(&dir).join("archscaffold"),
                None => Path::new(&std::env::var_os("HOME")?).join(".cache/archscaffold"),
            },
        };
        Some(base.join("rustfmt"))
    }

    fn entry(&self, text: &[u8]) -> PathBuf {
        let digest = Sha256::new()
            .chain_update(self.version.as_bytes())
            .chain_update([0u8])
            .chain_update(EDITION.as_bytes())
            .chain_update([0u8])
            .chain_update(text)
            .finalize();
        let hex = crate::hex::lower(&digest);
        self.dir.join(&hex[..2]).join(&hex[2..])
    }

    pub fn get(&self, text: &[u8]) -> Option<Vec<u8>> {
        fs::read(self.entry(text)).ok()
    }

    pub fn put(&self, text: &[u8], formatted: &[u8]) {
        let entry = self.entry(text);
        let Some(dir) = entry.parent() else { return };
        if fs::create_dir_all(dir).is_err() {
            return;
        }
        let temporary = entry.with_extension(format!("tmp{}", std::process::id()));
        if fs::write(&temporary, formatted).is_err() || fs::rename(&temporary, &entry).is_err() {
            let _ = fs::remove_file(&temporary);
        }
    }
}

/// A file rustfmt is given, with the modules it formats with it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Root {
    path: String,
    /// The root and every module under it.
    members: Vec<String>,
    /// Bytes rustfmt reads for it.
    size: usize,
}

/// The files rustfmt must be given: those no other file declares with `mod name;`. rustfmt
/// formats a file's out-of-line modules itself, and formats a module again if it is also
/// named on the command line, which doubled the work. A declaration this does not
/// recognise only makes a module a root too: formatted twice, never missed.
fn crate_roots(files: &BTreeMap<String, PlannedFile>, paths: &[String]) -> Vec<Root> {
    let known: BTreeSet<&str> = paths.iter().map(String::as_str).collect();
    let mut children = BTreeMap::<&str, Vec<&str>>::new();
    for path in paths {
        let text = String::from_utf8_lossy(&files[path].contents);
        let (dir, stem) = match path.rsplit_once('/') {
            Some((dir, file)) => (dir, file.trim_end_matches(".rs")),
            None => ("", path.trim_end_matches(".rs")),
        };
        let base = if matches!(stem, "lib" | "main" | "mod") {
            dir.to_string()
        } else {
            format!("{dir}/{stem}")
        };
        for name in text.lines().filter_map(declared_module) {
            for candidate in [format!("{base}/{name}.rs"), format!("{base}/{name}/mod.rs")] {
                let candidate = candidate.trim_start_matches('/');
                if let Some(child) = known.get(candidate) {
                    children.entry(path).or_default().push(child);
                }
            }
        }
    }
    let declared: BTreeSet<&str> = children.values().flatten().copied().collect();
    paths
        .iter()
        .filter(|p| !declared.contains(p.as_str()))
        .map(|p| {
            let mut members = Vec::new();
            subtree(p, &children, &mut members);
            let size = members.iter().map(|m| files[m].contents.len()).sum();
            Root {
                path: p.clone(),
                members,
                size,
            }
        })
        .collect()
}

/// A root and every module under it, into `members` (a module's path is always deeper
/// than its parent's, so this ends).
fn subtree(path: &str, children: &BTreeMap<&str, Vec<&str>>, members: &mut Vec<String>) {
    members.push(path.to_string());
    for kid in children.get(path).into_iter().flatten() {
        subtree(kid, children, members);
    }
}

/// The module a line declares out of line (`mod name;`, `pub(crate) mod name;`, with
/// attributes before it on the line), if it does.
fn declared_module(line: &str) -> Option<&str> {
    let mut rest = line.trim();
    while let Some(after) = rest.strip_prefix("#[") {
        rest = after.split_once(']')?.1.trim_start();
    }
    if let Some(after) = rest.strip_prefix("pub") {
        rest = after.trim_start();
        if let Some(after) = rest.strip_prefix('(') {
            rest = after.split_once(')')?.1.trim_start();
        }
    }
    let name = rest
        .strip_prefix("mod ")?
        .trim()
        .strip_suffix(';')?
        .trim_end();
    let valid = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    valid.then_some(name)
}

/// Splits the roots into at most `workers` groups of about equal size, for one rustfmt
/// process each: rustfmt formats on one core.
fn balanced_groups(roots: &[Root], workers: usize) -> Vec<Vec<String>> {
    let mut by_size: Vec<&Root> = roots.iter().collect();
    by_size.sort_by(|a, b| b.size.cmp(&a.size).then_with(|| a.path.cmp(&b.path)));
    let mut groups: Vec<(usize, Vec<String>)> =
        vec![(0, Vec::new()); workers.clamp(1, roots.len().max(1))];
    for root in by_size {
        let lightest = groups
            .iter_mut()
            .min_by_key(|(total, _)| *total)
            .expect("at least one group");
        lightest.0 += root.size;
        lightest.1.push(root.path.clone());
    }
    groups
        .into_iter()
        .map(|(_, paths)| paths)
        .filter(|paths| !paths.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ownership::Owner;

    fn plan(files: &[(&str, &str)]) -> BTreeMap<String, PlannedFile> {
        files
            .iter()
            .map(|(path, text)| {
                let file = PlannedFile {
                    contents: text.as_bytes().to_vec(),
                    owner: Owner::Generator,
                };
                (path.to_string(), file)
            })
            .collect()
    }

    #[test]
    fn recognises_out_of_line_module_declarations_only() {
        assert_eq!(declared_module("mod app;"), Some("app"));
        assert_eq!(declared_module("    pub mod domain ;"), Some("domain"));
        assert_eq!(declared_module("pub(crate) mod rules;"), Some("rules"));
        assert_eq!(declared_module("#[cfg(test)] mod tests;"), Some("tests"));
        assert_eq!(declared_module("mod tests {"), None);
        assert_eq!(declared_module("// mod app;"), None);
        assert_eq!(declared_module("model app;"), None);
    }

    #[test]
    fn only_files_no_module_declares_are_roots() {
        let files = plan(&[
            ("svc/src/lib.rs", "pub mod app;\npub mod domain;\n"),
            ("svc/src/app.rs", "fn a() {}\n"),
            ("svc/src/domain/mod.rs", "mod rules;\n"),
            ("svc/src/domain/rules.rs", "fn r() {}\n"),
            ("svc/src/main.rs", "fn main() {}\n"),
            ("svc/tests/api.rs", "mod app;\n"),
            ("svc/src/orphan.rs", "fn o() {}\n"),
        ]);
        let paths: Vec<String> = files.keys().cloned().collect();
        let roots = crate_roots(&files, &paths);
        let names: Vec<&str> = roots.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(
            names,
            [
                "svc/src/lib.rs",
                "svc/src/main.rs",
                "svc/src/orphan.rs",
                "svc/tests/api.rs"
            ]
        );
        let lib = roots.iter().find(|r| r.path == "svc/src/lib.rs").unwrap();
        let subtree = [
            "svc/src/lib.rs",
            "svc/src/app.rs",
            "svc/src/domain/mod.rs",
            "svc/src/domain/rules.rs",
        ];
        assert_eq!(lib.members, subtree);
        assert_eq!(
            lib.size,
            subtree
                .iter()
                .map(|p| files[*p].contents.len())
                .sum::<usize>()
        );
    }

    fn text_of(files: &BTreeMap<String, PlannedFile>, path: &str) -> String {
        String::from_utf8(files[path].contents.clone()).unwrap()
    }

    /// A cache directory of its own, removed at the end.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let dir =
                std::env::temp_dir().join(format!("archscaffold-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn a_crate_the_cache_knows_is_not_formatted_again_and_new_ones_are_kept() {
        let rustfmt = std::env::var_os("RUSTFMT").unwrap_or_else(|| "rustfmt".into());
        // The generator's tests run where rustfmt is (CI installs it with the toolchain):
        // without it this test would prove nothing, so it fails instead of passing.
        let version = rustfmt_version(&rustfmt)
            .unwrap()
            .expect("rustfmt is needed for this test: `rustup component add rustfmt`");
        let dir = TempDir::new("fmt-cache");
        let cache = FormatCache {
            dir: dir.0.clone(),
            version,
        };
        // An entry rustfmt would never write proves that the cached crate was not formatted.
        let known = "pub mod inner;\nfn   known() {}\n";
        cache.put(known.as_bytes(), b"// as the cache has it\n");
        cache.put(b"fn inner() {}\n", b"fn inner() {}\n");
        let mut files = plan(&[
            ("a/src/lib.rs", known),
            ("a/src/inner.rs", "fn inner() {}\n"),
            ("b/src/lib.rs", "fn   fresh( ) { }\n"),
        ]);
        let formatted = rust_files_cached_in(&mut files, Some(dir.0.clone())).unwrap();
        assert_eq!(formatted, Formatted::Yes);
        assert_eq!(text_of(&files, "a/src/lib.rs"), "// as the cache has it\n");
        assert_eq!(text_of(&files, "b/src/lib.rs"), "fn fresh() {}\n");
        assert_eq!(
            cache.get(b"fn   fresh( ) { }\n").as_deref(),
            Some(b"fn fresh() {}\n".as_slice()),
            "what rustfmt made is kept"
        );
        // A test crate's shared module is a root of its own to `crate_roots`: cached, it
        // must still be on disk for the test crate that declares it.
        cache.put(b"pub fn shared() {}\n", b"pub fn shared() {}\n");
        let mut files = plan(&[
            ("svc/tests/api.rs", "mod callees;\nfn   api() {}\n"),
            ("svc/tests/callees.rs", "pub fn shared() {}\n"),
        ]);
        rust_files_cached_in(&mut files, Some(dir.0.clone())).unwrap();
        assert_eq!(
            text_of(&files, "svc/tests/api.rs"),
            "mod callees;\nfn api() {}\n"
        );
        // Without a cache the same text is formatted by rustfmt.
        let mut files = plan(&[("a/src/lib.rs", "fn   known() {}\n")]);
        rust_files_cached_in(&mut files, None).unwrap();
        assert_eq!(files["a/src/lib.rs"].contents, b"fn known() {}\n");
    }

    #[test]
    fn a_file_belongs_to_the_package_above_its_source_directory() {
        assert_eq!(
            package_of("services/orders/src/domain/mod.rs"),
            "services/orders"
        );
        assert_eq!(
            package_of("services/orders/tests/callees.rs"),
            "services/orders"
        );
        assert_eq!(package_of("services/orders/build.rs"), "services/orders");
        assert_eq!(package_of("src/main.rs"), "");
        assert_eq!(package_of("tools/gen.rs"), "tools");
    }

    #[test]
    fn groups_are_balanced_and_cover_every_root() {
        let roots: Vec<Root> = [("a", 90), ("b", 50), ("c", 40), ("d", 10)]
            .iter()
            .map(|(p, s)| Root {
                path: p.to_string(),
                members: vec![p.to_string()],
                size: *s,
            })
            .collect();
        let groups = balanced_groups(&roots, 2);
        assert_eq!(
            groups,
            vec![
                vec!["a".to_string(), "d".to_string()],
                vec!["b".to_string(), "c".to_string()]
            ]
        );
        assert_eq!(balanced_groups(&roots, 8).len(), 4);
        assert_eq!(balanced_groups(&roots, 0), vec![vec!["a", "b", "c", "d"]]);
    }
}
