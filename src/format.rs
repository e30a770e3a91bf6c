//! Formats the planned Rust files with rustfmt, in one process for the whole plan.
//!
//! rustfmt's layout depends on name lengths and import order, so no template can be
//! rustfmt-clean for every spec; formatting the output is what makes `cargo fmt --check`
//! pass in every generated workspace. The files go through a temporary tree (rustfmt
//! follows `mod` declarations, so the layout is kept) and come back into the plan before
//! the lock file hashes them. The bytes depend on the rustfmt version; with no rustfmt
//! on the machine the code is left as rendered, which still builds.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::PathBuf;
use std::process::{Command, Stdio};
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
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut running = Vec::new();
    for group in balanced_groups(&crate_roots(files, &paths), workers) {
        let child = Command::new(&rustfmt)
            .args(["--edition", EDITION, "--quiet"])
            .args(group.iter().map(|p| root.join(p)))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn();
        match child {
            Ok(child) => running.push(child),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Formatted::RustfmtMissing);
            }
            Err(e) => return Err(Error::Blueprint(format!("cannot run rustfmt: {e}"))),
        }
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
    for path in &paths {
        let src = root.join(path);
        let formatted = fs::read(&src).map_err(Error::io(&src))?;
        files.get_mut(path).expect("planned").contents = formatted;
    }
    drop(tree);
    Ok(Formatted::Yes)
}

/// The files rustfmt must be given: those no other file declares with `mod name;`. rustfmt
/// formats a file's out-of-line modules itself, and formats a module again if it is also
/// named on the command line, which doubled the work. A declaration this does not
/// recognise only makes a module a root too: formatted twice, never missed.
fn crate_roots(files: &BTreeMap<String, PlannedFile>, paths: &[String]) -> Vec<(String, usize)> {
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
        .map(|p| (p.clone(), subtree_size(p, files, &children)))
        .collect()
}

/// Bytes rustfmt reads from a root: the root and every module under it (a module's path is
/// always deeper than its parent's, so this ends).
fn subtree_size(
    path: &str,
    files: &BTreeMap<String, PlannedFile>,
    children: &BTreeMap<&str, Vec<&str>>,
) -> usize {
    let below = children.get(path).map_or(0, |kids| {
        kids.iter()
            .map(|kid| subtree_size(kid, files, children))
            .sum()
    });
    files[path].contents.len() + below
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
fn balanced_groups(roots: &[(String, usize)], workers: usize) -> Vec<Vec<String>> {
    let mut by_size: Vec<&(String, usize)> = roots.iter().collect();
    by_size.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let mut groups: Vec<(usize, Vec<String>)> =
        vec![(0, Vec::new()); workers.clamp(1, roots.len().max(1))];
    for (path, size) in by_size {
        let lightest = groups
            .iter_mut()
            .min_by_key(|(total, _)| *total)
            .expect("at least one group");
        lightest.0 += size;
        lightest.1.push(path.clone());
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
        let names: Vec<&str> = roots.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            names,
            [
                "svc/src/lib.rs",
                "svc/src/main.rs",
                "svc/src/orphan.rs",
                "svc/tests/api.rs"
            ]
        );
        let lib = roots.iter().find(|(p, _)| p == "svc/src/lib.rs").unwrap();
        let subtree = [
            "svc/src/lib.rs",
            "svc/src/app.rs",
            "svc/src/domain/mod.rs",
            "svc/src/domain/rules.rs",
        ];
        assert_eq!(
            lib.1,
            subtree
                .iter()
                .map(|p| files[*p].contents.len())
                .sum::<usize>()
        );
    }

    #[test]
    fn groups_are_balanced_and_cover_every_root() {
        let roots: Vec<(String, usize)> = [("a", 90), ("b", 50), ("c", 40), ("d", 10)]
            .iter()
            .map(|(p, s)| (p.to_string(), *s))
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
