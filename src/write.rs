//! Puts a plan on disk: the only step with side effects.
//!
//! Files are written to a staging directory beside the target and moved into place only
//! when all of them are written, so a failure leaves nothing half-written. A non-empty
//! target is refused unless `--force`; with it, generator-owned files are written over the
//! target's, a user-owned file that exists is never touched, and every other file there is
//! left alone. The merge base (`base`) is written with the files.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use crate::base;
use crate::error::{Error, Result};
use crate::git_pack::{Kind, ObjectId, Pack};
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
        .filter(|(path, file)| file.owner != Owner::User || !target.join(path).exists())
        .map(|(path, file)| (path.clone(), file.contents.as_slice()))
        .chain(base::entries(plan))
        .collect();
    // The staging directory is new and moves into place whole, so its files are written
    // directly, without write_file's temporary beside each: creating files is most of
    // what writing costs.
    let mut made = std::collections::HashSet::new();
    for (path, contents) in &written {
        write_new_file(&staging_dir.join(path), contents, &mut made)?;
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

/// Writes a file that did not exist; scripts are made executable. `made` holds the
/// directories made so far, so each is made once.
fn write_new_file(
    path: &Path,
    contents: &[u8],
    made: &mut std::collections::HashSet<PathBuf>,
) -> Result<()> {
    if let Some(dir) = path.parent()
        && !made.contains(dir)
    {
        fs::create_dir_all(dir).map_err(Error::io(dir))?;
        made.insert(dir.to_path_buf());
    }
    fs::write(path, contents).map_err(Error::io(path))?;
    if path.extension().is_some_and(|e| e == "sh") {
        make_executable(path)?;
    }
    Ok(())
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

/// `git init` on branch `main` and one commit of exactly the written files, whose objects
/// go into one pack (`git_pack`). The index gets each file's stat data, so `git status`
/// is clean without reading the files again.
fn commit(dir: &Path, written: &[(String, &[u8])]) -> Result<()> {
    let mut init = git2::RepositoryInitOptions::new();
    init.initial_head("main");
    let repo = git2::Repository::init_opts(dir, &init)?;
    let mut pack = Pack::default();
    let mut files = BTreeMap::new();
    for (path, contents) in written {
        let id = pack.add(Kind::Blob, contents)?;
        let mode = if path.ends_with(".sh") {
            0o100755
        } else {
            0o100644
        };
        files.insert(path.clone(), (id, mode));
    }
    let tree = pack.add_tree(&files)?;
    let signature = repo
        .signature()
        .or_else(|_| git2::Signature::now("archscaffold", "archscaffold@localhost"))?;
    let person = signature_line(&signature);
    let message = format!("Generate workspace with archscaffold {}\n", crate::VERSION);
    let commit_text = format!(
        "tree {}\nauthor {person}\ncommitter {person}\n\n{message}",
        tree.hex()
    );
    let commit = pack.add(Kind::Commit, commit_text.as_bytes())?;
    pack.write(&repo.path().join("objects/pack"))?;
    let commit = git2::Oid::from_bytes(&commit.0)?;
    repo.reference(
        "refs/heads/main",
        commit,
        true,
        "commit (initial): generated by archscaffold",
    )?;

    let mut index = repo.index()?;
    for (path, (id, mode)) in &files {
        index.add(&index_entry(dir, path, *id, *mode)?)?;
    }
    index.write()?;
    Ok(())
}

/// `Name <email> seconds +hhmm`, as a commit records its author.
fn signature_line(signature: &git2::Signature<'_>) -> String {
    let when = signature.when();
    let offset = when.offset_minutes();
    let sign = if offset < 0 { '-' } else { '+' };
    format!(
        "{} <{}> {} {sign}{:02}{:02}",
        String::from_utf8_lossy(signature.name_bytes()),
        String::from_utf8_lossy(signature.email_bytes()),
        when.seconds(),
        offset.abs() / 60,
        offset.abs() % 60
    )
}

/// The index entry of a committed file, with the stat data git compares to see it unchanged.
fn index_entry(dir: &Path, path: &str, id: ObjectId, mode: u32) -> Result<git2::IndexEntry> {
    let full = dir.join(path);
    let meta = fs::metadata(&full).map_err(Error::io(&full))?;
    let stat = Stat::of(&meta);
    Ok(git2::IndexEntry {
        ctime: git2::IndexTime::new(stat.ctime.0, stat.ctime.1),
        mtime: git2::IndexTime::new(stat.mtime.0, stat.mtime.1),
        dev: stat.dev,
        ino: stat.ino,
        mode,
        uid: stat.uid,
        gid: stat.gid,
        // The index keeps sizes in 32 bits, as git does.
        file_size: meta.len() as u32,
        id: git2::Oid::from_bytes(&id.0)?,
        flags: path.len().min(0xfff) as u16,
        flags_extended: 0,
        path: path.as_bytes().to_vec(),
    })
}

/// The stat fields of an index entry (git truncates them to 32 bits).
struct Stat {
    ctime: (i32, u32),
    mtime: (i32, u32),
    dev: u32,
    ino: u32,
    uid: u32,
    gid: u32,
}

impl Stat {
    #[cfg(unix)]
    fn of(meta: &fs::Metadata) -> Stat {
        use std::os::unix::fs::MetadataExt;
        Stat {
            ctime: (meta.ctime() as i32, meta.ctime_nsec() as u32),
            mtime: (meta.mtime() as i32, meta.mtime_nsec() as u32),
            dev: meta.dev() as u32,
            ino: meta.ino() as u32,
            uid: meta.uid(),
            gid: meta.gid(),
        }
    }

    /// Elsewhere only the modification time: git reads the file once to compare.
    #[cfg(not(unix))]
    fn of(meta: &fs::Metadata) -> Stat {
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .unwrap_or_default();
        Stat {
            ctime: (0, 0),
            mtime: (mtime.as_secs() as i32, mtime.subsec_nanos()),
            dev: 0,
            ino: 0,
            uid: 0,
            gid: 0,
        }
    }
}
