//! `update`, `diff` and `check`: render a workspace's own `archscaffold.toml` with this
//! archscaffold and bring the tree to it, file by file, without losing a hand-written line.
//!
//! For each file, with base = what was generated last time (see `base`):
//! - generator-owned, untouched: replaced by the new render; no longer rendered: deleted;
//! - generator-owned, edited: merged three ways (base, the file on disk, the new render);
//!   a conflict is written with markers and reported; no longer rendered: kept;
//! - user-owned: never touched once generated; a new one is created;
//! - deleted by the user: left deleted.
//!
//! The vendored platform (`crates/platform`) is not merged: it is replaced whole when
//! this archscaffold ships another tree, and an edit to it is never overwritten without
//! `--discard-platform-edits` (see [`PlatformStep`]).
//!
//! `prepare` computes every change in memory; `apply` writes them, then the new base and
//! the lock. `diff` prints the changes, `check` says whether there are any.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use crate::base::{self, Base};
use crate::blueprint::Blueprint;
use crate::error::{Error, Result};
use crate::format::Formatted;
use crate::layout::{self, BASE_DIR, LOCK_FILE, SPEC_FILE, VENDORED_PLATFORM};
use crate::lock::{self, Lock};
use crate::merge::{self, Labels, Merged};
use crate::migrations::{self, Existing, ExistingService};
use crate::ownership::Owner;
use crate::plan::Plan;
use crate::platform::{self, Edit, Recorded};
use crate::spec::{self, Overrides, Spec};
use crate::tags;

#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// The user wrote the migrations for removed or retyped fields.
    pub fields_migrated_by_hand: bool,
    /// Replace a vendored platform the user edited, edits and all.
    pub discard_platform_edits: bool,
}

/// What the update does to the vendored platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlatformStep {
    /// Already the tree this archscaffold ships (or the blueprint has none).
    Current,
    /// Replaced whole by this archscaffold's tree (`from`: the version it had, if known).
    Replaced { from: Option<String>, to: String },
    /// Edited by the user and left as it is: this archscaffold ships the same tree.
    EditsKept,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// A file that did not exist.
    Create,
    /// A generated file the user had not touched, replaced by the new render.
    Replace,
    /// An edited generated file, merged cleanly with the new render.
    Merge,
    /// An edited generated file whose merge conflicts: written with markers.
    Conflict,
    /// A generated file the user had not touched and that is no longer generated.
    Delete,
    /// An edited generated file that is no longer generated: kept.
    KeepEdited,
    /// A generated file the user deleted: left deleted.
    KeepDeleted,
    /// An edited file with no copy of what was generated to merge against: kept as it is.
    KeepUnmerged,
}

impl Action {
    pub fn label(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Replace => "update",
            Action::Merge => "merge",
            Action::Conflict => "CONFLICT",
            Action::Delete => "delete",
            Action::KeepEdited => "keep",
            Action::KeepDeleted => "skip",
            Action::KeepUnmerged => "keep",
        }
    }

    pub fn note(self) -> &'static str {
        match self {
            Action::Create | Action::Replace | Action::Delete => "",
            Action::Merge => "your edits kept",
            Action::Conflict => "resolve the conflict markers",
            Action::KeepEdited => "edited by you, no longer generated",
            Action::KeepDeleted => "deleted by you, left deleted",
            Action::KeepUnmerged => {
                "edited by you; no copy of what was generated to merge against, so the new version was not applied"
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct Change {
    pub path: String,
    pub action: Action,
    /// The file on disk before the update.
    pub before: Option<Vec<u8>>,
    /// The file after it; `None` when the update leaves no file.
    pub after: Option<Vec<u8>>,
}

impl Change {
    pub fn writes(&self) -> bool {
        self.before != self.after
    }
}

#[derive(Debug)]
pub struct Update {
    pub root: PathBuf,
    pub spec: Spec,
    /// Every file that is not left exactly as it is, in path order.
    pub changes: Vec<Change>,
    /// The new render, sealed with its lock: the next base.
    pub plan: Plan,
    /// The version that generated the workspace last.
    pub previous_version: String,
    /// A new `archscaffold.toml` to write (from `add context`).
    pub spec_text: Option<String>,
    /// What the update does that the running system will feel (a saga whose steps change).
    pub warnings: Vec<String>,
    pub platform: PlatformStep,
    /// The vendored platform's files that are not as archscaffold put them there, as
    /// workspace paths, before the update.
    pub platform_edits: Vec<(String, Edit)>,
    /// The team templates whose source resolved to something else than at the last update
    /// (another commit, or other files in the folder), by name.
    pub changed_templates: Vec<String>,
    /// The lock and the base folder are not what this render records.
    bookkeeping_stale: bool,
}

impl Update {
    pub fn conflicts(&self) -> impl Iterator<Item = &Change> {
        self.changes.iter().filter(|c| c.action == Action::Conflict)
    }

    /// Generator-owned files on disk that still hold conflict markers.
    pub fn files_with_conflict_markers(&self) -> Vec<String> {
        self.plan
            .pristine()
            .map(|(path, _)| path)
            .filter(|path| {
                fs::read(self.root.join(path))
                    .is_ok_and(|bytes| merge::has_conflict_markers(&bytes))
            })
            .cloned()
            .collect()
    }

    /// `None` when the workspace is in sync with its spec and this archscaffold; otherwise
    /// a one-line reason.
    pub fn out_of_sync(&self) -> Option<String> {
        if self.platform == PlatformStep::EditsKept {
            return Some(format!(
                "{} file(s) of the vendored platform ({}) are not as archscaffold vendored them; carry the change as a patch (README: \"The platform crate\"), then `archscaffold update --discard-platform-edits` puts the crate back",
                self.platform_edits.len(),
                VENDORED_PLATFORM
            ));
        }
        if let Some(first) = self.changed_templates.first() {
            return Some(format!(
                "the source of template `{first}` changed since the last update{}; run `archscaffold update`",
                if self.changed_templates.len() > 1 {
                    format!(" ({} templates in all)", self.changed_templates.len())
                } else {
                    String::new()
                }
            ));
        }
        let writes: Vec<&Change> = self.changes.iter().filter(|c| c.writes()).collect();
        if let Some(first) = writes.first() {
            return Some(format!(
                "{} file(s) differ from what archscaffold {} generates from archscaffold.toml (first: {} {}); run `archscaffold update`",
                writes.len(),
                crate::VERSION,
                first.action.label(),
                first.path
            ));
        }
        if self.previous_version != crate::VERSION {
            return Some(format!(
                "generated by archscaffold {}, this is {}; run `archscaffold update`",
                self.previous_version,
                crate::VERSION
            ));
        }
        if self.bookkeeping_stale {
            return Some(format!(
                "{} or {} is not what archscaffold {} records for archscaffold.toml; run `archscaffold update`",
                LOCK_FILE,
                BASE_DIR,
                crate::VERSION
            ));
        }
        None
    }
}

/// Reads the workspace at `root` and computes what an update would change. `spec_text`
/// replaces the workspace's `archscaffold.toml` (for `add context`).
pub fn prepare(
    root: &Path,
    spec_text: Option<String>,
    blueprint: &Blueprint,
    options: Options,
) -> Result<Update> {
    let spec_path = root.join(SPEC_FILE);
    let lock_path = root.join(LOCK_FILE);
    let not_a_workspace = |missing: &Path| Error::NotAWorkspace {
        dir: root.to_path_buf(),
        missing: missing
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into(),
    };
    let text = match &spec_text {
        Some(text) => text.clone(),
        None => fs::read_to_string(&spec_path).map_err(|_| not_a_workspace(&spec_path))?,
    };
    let mut spec = spec::parse(&text, &spec_label(root), &Overrides::default())?;
    let lock_text = fs::read_to_string(&lock_path).map_err(|_| not_a_workspace(&lock_path))?;
    let lock = lock::parse(&lock_text, &lock_path)?;
    if is_newer(lock.version(), crate::VERSION) {
        return Err(Error::NewerGenerator {
            workspace: lock.version().to_string(),
        });
    }

    let renamed_from: Option<&str> = lock
        .files
        .keys()
        .filter_map(|p| layout::system_of_proto(p))
        .find(|system| *system != spec.system.snake);
    if let Some(old) = renamed_from {
        return Err(Error::SystemRenamed {
            old: old.to_string(),
            new: spec.system.raw.clone(),
        });
    }

    let base = base::load(root, &lock);
    let existing = existing_services(root, &lock, &base);
    let dirs: BTreeSet<&str> = spec.contexts.iter().map(layout::service_dir).collect();
    let removed: Vec<String> = existing
        .keys()
        .filter(|d| !dirs.contains(d.as_str()))
        .cloned()
        .collect();
    if !removed.is_empty() {
        return Err(Error::ContextRemoved(removed));
    }

    let previous_protos: BTreeMap<String, String> = spec
        .contexts
        .iter()
        .map(|c| layout::proto(&spec, c))
        .filter_map(|path| {
            let text = base.or_disk(root, &path)?;
            Some((path, String::from_utf8_lossy(&text).into_owned()))
        })
        .collect();
    tags::keep(&mut spec, &previous_protos);

    let warnings = crate::saga_steps::warnings(&spec, |path| {
        Some(String::from_utf8_lossy(&base.or_disk(root, path)?).into_owned())
    });
    let team = crate::team_template::render_all(&spec, root)?;
    let mut plan = Plan::render(&spec, blueprint, &team)?;
    // Unformatted Rust would differ from every file generated before: each one would be
    // rewritten or conflict. A new workspace can do without rustfmt; an update cannot.
    if plan.formatted == Formatted::RustfmtMissing {
        return Err(Error::RustfmtMissing);
    }
    migrations::evolve(
        &mut plan.files,
        &spec,
        &existing,
        options.fields_migrated_by_hand,
    )?;
    plan.seal(&migrations::tables_of(&spec))?;

    let labels = Labels {
        base: &format!("generated by archscaffold {}", lock.version()),
        ours: "yours",
        theirs: &format!("archscaffold {}", crate::VERSION),
    };
    let VendoredPlatform {
        step: platform,
        edits: platform_edits,
        mut changes,
    } = vendored_platform(root, &lock, &plan, options.discard_platform_edits)?;
    let paths: BTreeSet<&String> = plan.files.keys().chain(lock.files.keys()).collect();
    for path in paths {
        if path == LOCK_FILE || path == SPEC_FILE || layout::in_vendored_platform(path).is_some() {
            continue;
        }
        if let Some(change) = decide(root, path, &plan, &lock, &base, &labels)? {
            changes.push(change);
        }
    }

    let changed_templates = plan
        .templates
        .iter()
        .filter(|now| {
            let before = lock.templates.iter().find(|t| t.name == now.name);
            before.is_some_and(|before| {
                before.source == now.source && before.resolved != now.resolved
            })
        })
        .map(|t| t.name.clone())
        .collect();
    let stale_lock = lock_text.as_bytes() != plan.files[LOCK_FILE].contents.as_slice();
    let stale_base = base::entries(&plan)
        .any(|(path, contents)| fs::read(root.join(path)).ok().as_deref() != Some(contents))
        || stray_base_files(root, &plan);
    Ok(Update {
        root: root.to_path_buf(),
        spec,
        changes,
        previous_version: lock.version().to_string(),
        plan,
        spec_text,
        warnings,
        platform,
        platform_edits,
        changed_templates,
        bookkeeping_stale: stale_lock || stale_base,
    })
}

/// What the update does to the vendored platform.
struct VendoredPlatform {
    step: PlatformStep,
    edits: Vec<(String, Edit)>,
    /// The file changes that replace it, if it is replaced.
    changes: Vec<Change>,
}

/// The vendored platform's step, its edits, and the file changes that replace it. The
/// crate as it was vendored comes from the lock: its `[platform]` table, or for a lock
/// older than format 3, its files listed among the generated ones.
fn vendored_platform(
    root: &Path,
    lock: &Lock,
    plan: &Plan,
    discard_edits: bool,
) -> Result<VendoredPlatform> {
    let Some(new) = plan.platform.clone() else {
        return Ok(VendoredPlatform {
            step: PlatformStep::Current,
            edits: Vec::new(),
            changes: Vec::new(),
        });
    };
    let old = lock.platform.clone().unwrap_or_else(|| {
        let files: BTreeMap<String, String> = lock
            .files
            .iter()
            .filter_map(|(path, locked)| {
                Some((
                    layout::in_vendored_platform(path)?.to_string(),
                    locked.sha256.clone(),
                ))
            })
            .collect();
        Recorded::from_hashes(String::new(), files)
    });
    let disk = platform::on_disk(root)?;
    let on_disk = Recorded::of(&disk);
    let edits: Vec<(String, Edit)> = old
        .edits(&on_disk)
        .into_iter()
        .map(|(path, edit)| (layout::vendored_platform_file(&path), edit))
        .collect();
    // Already the new tree (even if not the one the lock recorded): nothing to replace,
    // nothing edited.
    if on_disk == new {
        return Ok(VendoredPlatform {
            step: PlatformStep::Current,
            edits: Vec::new(),
            changes: Vec::new(),
        });
    }
    if !edits.is_empty() && !discard_edits {
        if old.tree_sha256 == new.tree_sha256 {
            return Ok(VendoredPlatform {
                step: PlatformStep::EditsKept,
                edits,
                changes: Vec::new(),
            });
        }
        return Err(Error::PlatformEdited {
            to: new.version,
            files: edits
                .iter()
                .map(|(path, edit)| format!("{path} ({})", edit.label()))
                .collect(),
        });
    }
    let mut changes = Vec::new();
    let paths: BTreeSet<&String> = disk.keys().chain(new.files.keys()).collect();
    for path in paths {
        let before = disk.get(path).cloned();
        let after = plan
            .files
            .get(&layout::vendored_platform_file(path))
            .map(|f| f.contents.clone());
        let action = match (&before, &after) {
            (None, Some(_)) => Action::Create,
            (Some(_), None) => Action::Delete,
            (Some(b), Some(a)) if b != a => Action::Replace,
            _ => continue,
        };
        changes.push(Change {
            path: layout::vendored_platform_file(path),
            action,
            before,
            after,
        });
    }
    let from = (!old.version.is_empty()).then(|| old.version.clone());
    Ok(VendoredPlatform {
        step: PlatformStep::Replaced {
            from,
            to: new.version,
        },
        edits,
        changes,
    })
}

/// How messages name the workspace's spec: `archscaffold.toml` in the current directory.
pub fn spec_label(root: &Path) -> String {
    let path = root.join(SPEC_FILE);
    path.strip_prefix(".")
        .unwrap_or(&path)
        .display()
        .to_string()
}

/// What happens to one path; `None` when it stays exactly as it is.
fn decide(
    root: &Path,
    path: &str,
    plan: &Plan,
    lock: &Lock,
    base: &Base,
    labels: &Labels<'_>,
) -> Result<Option<Change>> {
    let new = plan.files.get(path);
    let old = lock.files.get(path);
    let disk = fs::read(root.join(path)).ok();
    let change = |action, after: Option<Vec<u8>>| {
        Some(Change {
            path: path.to_string(),
            action,
            before: disk.clone(),
            after,
        })
    };
    Ok(match (new, old) {
        (Some(file), _) if file.owner == Owner::User => {
            // Generated once, or already there: the user's from now on.
            if old.is_some() || disk.is_some() {
                None
            } else {
                change(Action::Create, Some(file.contents.clone()))
            }
        }
        (Some(file), old) => match &disk {
            None if old.is_none() => change(Action::Create, Some(file.contents.clone())),
            None => change(Action::KeepDeleted, None),
            Some(d) if *d == file.contents => None,
            Some(d) => match base.get(path) {
                Some(b) if b == d.as_slice() => {
                    change(Action::Replace, Some(file.contents.clone()))
                }
                // A file never generated here before, in the way of a new one: merge as
                // if both had started empty, so nothing of either is lost.
                b if b.is_some() || old.is_none() => {
                    match merge::three_way(path, b.unwrap_or_default(), d, &file.contents, labels)?
                    {
                        Merged::Clean(m) if m == *d => None,
                        Merged::Clean(m) => change(Action::Merge, Some(m)),
                        Merged::Conflict(m) => change(Action::Conflict, Some(m)),
                    }
                }
                _ => change(Action::KeepUnmerged, disk.clone()),
            },
        },
        (None, Some(locked)) if locked.owner == Owner::Generator => match &disk {
            None => None,
            Some(d) if base.get(path) == Some(d.as_slice()) => change(Action::Delete, None),
            Some(_) => change(Action::KeepEdited, disk.clone()),
        },
        _ => None,
    })
}

/// Files in the base folder that the new render does not have.
fn stray_base_files(root: &Path, plan: &Plan) -> bool {
    let dir = root.join(BASE_DIR);
    let expected: BTreeSet<String> = plan.pristine().map(|(p, _)| p.clone()).collect();
    let mut stack = vec![dir.clone()];
    let mut count = 0;
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                count += 1;
                let rel = path.strip_prefix(&dir).unwrap_or(&path);
                let rel = rel.to_string_lossy().replace('\\', "/");
                if !expected.contains(&rel) {
                    return true;
                }
            }
        }
    }
    count != expected.len()
}

/// The services the workspace has, with their migrations and the columns those create.
fn existing_services(root: &Path, lock: &Lock, base: &Base) -> BTreeMap<String, ExistingService> {
    let mut services: BTreeMap<String, ExistingService> = BTreeMap::new();
    for (path, locked) in &lock.files {
        let Some(dir) = layout::service_of_migration(path) else {
            continue;
        };
        if locked.owner != Owner::Generator {
            continue;
        }
        let contents = base.or_disk(root, path);
        services
            .entry(dir.to_string())
            .or_insert_with(|| ExistingService {
                columns: Default::default(),
                migrations: Vec::new(),
            })
            .migrations
            .push(Existing {
                path: path.clone(),
                contents,
            });
    }
    for (dir, service) in &mut services {
        // Migrations the user wrote count for numbering: the next one must not reuse theirs.
        let folder = layout::migrations_dir(dir);
        for entry in fs::read_dir(root.join(&folder))
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = format!("{folder}{name}");
            if name.ends_with(".sql") && !service.migrations.iter().any(|m| m.path == path) {
                service.migrations.push(Existing {
                    path,
                    contents: None,
                });
            }
        }
        service.columns = match &lock.tables {
            Some(tables) => tables.get(dir).cloned().unwrap_or_default(),
            None => service
                .migrations
                .iter()
                .find(|m| m.path.ends_with("/0001_init.sql"))
                .and_then(|m| m.contents.as_deref())
                .and_then(|c| migrations::columns_from_init_sql(&String::from_utf8_lossy(c)))
                .unwrap_or_default(),
        };
    }
    services
}

/// True when version `a` is newer than `b` (dotted numbers).
fn is_newer(a: &str, b: &str) -> bool {
    let parts = |v: &str| -> Vec<u64> { v.split('.').map(|p| p.parse().unwrap_or(0)).collect() };
    parts(a) > parts(b)
}

/// Refuses a git work tree with uncommitted changes under `root`, so that every update is
/// one diff the user can review. A workspace outside git is not checked.
pub fn ensure_clean(root: &Path) -> Result<()> {
    let Ok(repo) = git2::Repository::discover(root) else {
        return Ok(());
    };
    let Some(prefix) = base::repo_prefix(&repo, root) else {
        return Ok(());
    };
    let mut options = git2::StatusOptions::new();
    options
        .include_untracked(true)
        .recurse_untracked_dirs(true)
        .include_ignored(false);
    if !prefix.as_os_str().is_empty() {
        options.pathspec(prefix.to_string_lossy().as_ref());
    }
    let statuses = repo.statuses(Some(&mut options))?;
    let dirty: Vec<String> = statuses
        .iter()
        .filter(|s| s.status() != git2::Status::CURRENT)
        .filter_map(|s| s.path().ok().map(str::to_string))
        .collect();
    if dirty.is_empty() {
        Ok(())
    } else {
        Err(Error::DirtyWorkTree {
            count: dirty.len(),
            first: dirty[0].clone(),
        })
    }
}

/// Writes the update: the changed files, the new `archscaffold.toml` if any, the new base
/// and the lock, last, so an interrupted update is simply run again.
pub fn apply(update: &Update) -> Result<()> {
    let root = &update.root;
    for change in update.changes.iter().filter(|c| c.writes()) {
        let path = root.join(&change.path);
        match &change.after {
            Some(contents) => crate::write::write_file(&path, contents)?,
            None => {
                fs::remove_file(&path).map_err(Error::io(&path))?;
                remove_empty_parents(root, &path);
            }
        }
    }
    if let Some(text) = &update.spec_text {
        crate::write::write_file(&root.join(SPEC_FILE), text.as_bytes())?;
    }
    base::store(root, &update.plan)?;
    crate::write::write_file(
        &root.join(LOCK_FILE),
        &update.plan.files[LOCK_FILE].contents,
    )
}

fn remove_empty_parents(root: &Path, file: &Path) {
    let mut dir = file.parent();
    while let Some(d) = dir {
        if d == root || fs::remove_dir(d).is_err() {
            break;
        }
        dir = d.parent();
    }
}

/// The update as a unified diff, `a/` for the tree now and `b/` for after.
pub fn unified_diff(update: &Update) -> Result<String> {
    let mut out = String::new();
    for change in update.changes.iter().filter(|c| c.writes()) {
        let old = change.before.as_deref().unwrap_or_default();
        let new = change.after.as_deref().unwrap_or_default();
        let path = Path::new(&change.path);
        let mut patch = git2::Patch::from_buffers(
            old,
            change.before.as_ref().map(|_| path),
            new,
            change.after.as_ref().map(|_| path),
            None,
        )?;
        let text = patch.to_buf()?;
        out.push_str(&added_or_deleted(&String::from_utf8_lossy(&text), change));
    }
    Ok(out)
}

/// git2 writes a created or deleted file's patch as a change from or to an empty file;
/// `git apply` wants `/dev/null` and the file mode for those.
fn added_or_deleted(patch: &str, change: &Change) -> String {
    let mode = if change.path.ends_with(".sh") {
        "100755"
    } else {
        "100644"
    };
    let (kind, from, to) = match (&change.before, &change.after) {
        (None, Some(_)) => ("new", format!("--- a/{}", change.path), "--- /dev/null"),
        (Some(_), None) => ("deleted", format!("+++ b/{}", change.path), "+++ /dev/null"),
        _ => return patch.to_string(),
    };
    let mut lines: Vec<String> = Vec::new();
    for line in patch.lines() {
        if let Some(rest) = line.strip_prefix("index ") {
            let hashes = rest.split_whitespace().next().unwrap_or_default();
            let (old, new) = hashes.split_once("..").unwrap_or_default();
            lines.push(format!("{kind} file mode {mode}"));
            lines.push(match kind {
                "new" => format!("index 0000000..{new}"),
                _ => format!("index {old}..0000000"),
            });
        } else if line == from {
            lines.push(to.to_string());
        } else {
            lines.push(line.to_string());
        }
    }
    lines.join("\n") + "\n"
}

#[cfg(test)]
mod tests {
    use super::is_newer;

    #[test]
    fn versions_compare_by_number() {
        assert!(is_newer("0.10.0", "0.9.1"));
        assert!(!is_newer("0.2.0", "0.2.0"));
        assert!(!is_newer("0.1.0", "0.2.0"));
    }
}
