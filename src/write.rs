//! Puts a plan on disk: the only step with side effects.
//!
//! Files are written to a staging directory beside the target and moved into place only
//! when all of them are written, so a failure leaves nothing half-written. A non-empty
//! target is refused unless `--force`; with it, generator-owned files are written over the
//! target's, a user-owned file that exists is never touched, and every other file there is
//! left alone. The merge base (`base`) is written with the files.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::base;
use crate::error::{Error, Result};
use crate::ownership::Owner;
use crate::plan::Plan;

#[derive(Debug, Clone, Copy)]
pub struct WriteOptions {
    pub force: bool,
    pub git: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GitOutcome {
    /// A new repository with one commit holding every generated file.
    Committed,
    /// `--no-git`.
    Disabled,
    /// The target already was a repository; the user commits the changes.
    ExistingRepository,
}

/// Refuses a target that is a file, or a non-empty directory without `--force`.
pub fn check_target(target: &Path, force: bool) -> Result<()> {
    if !target.exists() {
        return Ok(());
    }
    if !target.is_dir() {
        return Err(Error::TargetNotDirectory(target.to_path_buf()));
    }
    if !force && !is_empty_dir(target)? {
        return Err(Error::TargetNotEmpty(target.to_path_buf()));
    }
    Ok(())
}

fn is_empty_dir(dir: &Path) -> Result<bool> {
    Ok(fs::read_dir(dir).map_err(Error::io(dir))?.next().is_none())
}

/// Removes the staging directory unless it has been moved into place.
struct Staging(Option<PathBuf>);

impl Drop for Staging {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

pub fn write(
    plan: &Plan,
    target: &Path,
    options: WriteOptions,
    mut on_file: impl FnMut(&str),
) -> Result<GitOutcome> {
    check_target(target, options.force)?;
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).map_err(Error::io(&parent))?;
    let leaf = target
        .file_name()
        .map_or_else(|| "workspace".into(), |n| n.to_string_lossy().into_owned());
    let staging_dir = parent.join(format!(".{leaf}.archscaffold-{}", std::process::id()));
    if staging_dir.exists() {
        fs::remove_dir_all(&staging_dir).map_err(Error::io(&staging_dir))?;
    }
    let mut staging = Staging(Some(staging_dir.clone()));

    // A user-owned file already in the target stays as the user left it.
    let written: Vec<(String, &[u8])> = plan
        .files
        .iter()
        .filter(|(path, file)| file.owner == Owner::Generator || !target.join(path).exists())
        .map(|(path, file)| (path.clone(), file.contents.as_slice()))
        .chain(base::entries(plan))
        .collect();
    for (path, contents) in &written {
        write_file(&staging_dir.join(path), contents)?;
        on_file(path);
    }

    let fresh = !target.exists() || is_empty_dir(target)?;
    if fresh {
        let outcome = if options.git {
            commit(&staging_dir, &written)?;
            GitOutcome::Committed
        } else {
            GitOutcome::Disabled
        };
        if target.exists() {
            fs::remove_dir(target).map_err(Error::io(target))?;
        }
        fs::rename(&staging_dir, target).map_err(Error::io(target))?;
        staging.0 = None;
        return Ok(outcome);
    }

    // --force over a non-empty directory: move generated files over, keep the rest.
    for (path, _) in &written {
        let dest = target.join(path);
        if let Some(dir) = dest.parent() {
            fs::create_dir_all(dir).map_err(Error::io(dir))?;
        }
        fs::rename(staging_dir.join(path), &dest).map_err(Error::io(&dest))?;
    }
    drop(staging);
    if !options.git {
        Ok(GitOutcome::Disabled)
    } else if target.join(".git").exists() {
        Ok(GitOutcome::ExistingRepository)
    } else {
        commit(target, &written)?;
        Ok(GitOutcome::Committed)
    }
}

/// Writes one file through a temporary beside it, so a reader never sees half of it;
/// scripts are made executable.
pub fn write_file(path: &Path, contents: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(Error::io(dir))?;
    }
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let temporary = path.with_file_name(format!(".{name}.archscaffold-tmp"));
    fs::write(&temporary, contents).map_err(Error::io(&temporary))?;
    if name.ends_with(".sh") {
        make_executable(&temporary)?;
    }
    fs::rename(&temporary, path).map_err(Error::io(path))
}

#[cfg(unix)]
fn make_executable(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).map_err(Error::io(path))
}

#[cfg(not(unix))]
fn make_executable(_path: &Path) -> Result<()> {
    Ok(())
}

/// `git init` on branch `main` and one commit of exactly the written files.
fn commit(dir: &Path, written: &[(String, &[u8])]) -> Result<()> {
    let mut init = git2::RepositoryInitOptions::new();
    init.initial_head("main");
    let repo = git2::Repository::init_opts(dir, &init)?;
    let odb = repo.odb()?;
    // Objects are collected in memory and reach the disk as one pack: as loose objects
    // they were a file each, and creating those files cost more than rendering.
    let mempack = odb.add_new_mempack_backend(1000)?;
    let mut index = repo.index()?;
    for (path, _) in written {
        index.add_path(Path::new(path))?;
    }
    index.write()?;
    let tree = repo.find_tree(index.write_tree()?)?;
    let signature = repo
        .signature()
        .or_else(|_| git2::Signature::now("archscaffold", "archscaffold@localhost"))?;
    let message = format!("Generate workspace with archscaffold {}", crate::VERSION);
    repo.commit(Some("HEAD"), &signature, &signature, &message, &tree, &[])?;
    let mut pack = git2::Buf::new();
    mempack.dump(&repo, &mut pack)?;
    let mut writer = odb.packwriter()?;
    writer.write_all(&pack).map_err(Error::io(dir))?;
    writer.commit()?;
    mempack.reset()?;
    Ok(())
}
