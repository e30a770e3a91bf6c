//! A team's own templates (`[[template]]` in the spec): each is fetched (a local folder, or
//! a git repository cloned with `git` and checked out at its `rev` with git2), rendered by
//! cargo-generate, and handed to the plan as files, where they are generated output like
//! any other.
//!
//! cargo-generate runs in a child process of archscaffold's own (`archscaffold
//! __render-template`), with an empty environment and an empty home: it reads
//! `CARGO_GENERATE_*` variables, `~/.cargo/cargo-generate.toml` and the user's name from
//! the machine, prints to the terminal unconditionally, and panics on some bad input. In the
//! child none of that reaches the output or the user; only its error message comes back,
//! through archscaffold's own.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Error, Result};
use crate::lock::{TemplateRecord, sha256_hex};
use crate::spec::Spec;
use crate::spec::model::{TeamTemplate, TemplateSource, TemplateValue};

/// The hidden subcommand that runs cargo-generate (see [`run_child`]).
pub const CHILD_COMMAND: &str = "__render-template";
/// How the child marks the one line of its stderr that is the error to report.
const ERROR_MARKER: &str = "archscaffold-template-error: ";
/// The user name the child's cargo-generate sees, for its `authors` placeholder.
const AUTHOR: &str = "archscaffold";

/// What one template rendered for a workspace.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub name: String,
    pub owner_is_user: bool,
    /// Where it came from, as the lock records it: `path:<as given>` or `git:<url>@<rev>`.
    pub source: String,
    /// What the source resolved to: the commit, or `sha256:<hash>` of the folder's files.
    pub resolved: String,
    /// Output paths relative to the workspace root, `/`-separated.
    pub files: BTreeMap<String, Vec<u8>>,
}

impl Rendered {
    /// The template as the lock records it.
    pub fn record(&self) -> TemplateRecord {
        TemplateRecord {
            name: self.name.clone(),
            source: self.source.clone(),
            resolved: self.resolved.clone(),
        }
    }
}

/// The folders of the crates that `team` adds (a `Cargo.toml` with a `[package]`): they
/// join the workspace's members.
pub fn crates(team: &[Rendered]) -> Vec<String> {
    let mut members: Vec<String> = team
        .iter()
        .flat_map(|rendered| &rendered.files)
        .filter_map(|(path, contents)| {
            let folder = path.strip_suffix("/Cargo.toml")?;
            let manifest: toml::Table = std::str::from_utf8(contents).ok()?.parse().ok()?;
            manifest.contains_key("package").then(|| folder.to_string())
        })
        .collect();
    members.sort();
    members
}

/// Renders every template of `spec` for the workspace at `root` (relative template paths
/// are relative to it).
pub fn render_all(spec: &Spec, root: &Path) -> Result<Vec<Rendered>> {
    spec.templates
        .iter()
        .map(|template| render(spec, template, root))
        .collect()
}

fn render(spec: &Spec, template: &TeamTemplate, root: &Path) -> Result<Rendered> {
    let scratch = tempfile::tempdir().map_err(Error::io(std::env::temp_dir()))?;
    let fetched = fetch(template, root, scratch.path())?;
    let folder = match &template.subfolder {
        Some(sub) => fetched.dir.join(sub),
        None => fetched.dir.clone(),
    };
    if !folder.is_dir() {
        return Err(problem(
            template,
            format!("its folder `{}` does not exist", folder.display()),
            "check `path`, `rev` and `subfolder` in the template's entry",
        ));
    }
    // A folder has no commit: its identity is its files' (the template's own, subfolder
    // applied, so that another template of the same source changing is no change here).
    let resolved = match fetched.commit {
        Some(commit) => commit,
        None => format!("sha256:{}", tree_hash(&folder)?),
    };
    let mut files = BTreeMap::new();
    let instances: Vec<(String, Option<usize>)> = if template.each_context {
        (0..spec.contexts.len())
            .map(|i| (spec.contexts[i].name.kebab.clone(), Some(i)))
            .collect()
    } else {
        vec![(spec.system.kebab.clone(), None)]
    };
    for (i, (project, context)) in instances.iter().enumerate() {
        let out = scratch.path().join(format!("out-{i}"));
        let values = values_file(spec, template, *context);
        let values_path = scratch.path().join(format!("values-{i}.toml"));
        std::fs::write(&values_path, values).map_err(Error::io(values_path.clone()))?;
        run_cargo_generate(
            template,
            &folder,
            &out,
            project,
            &values_path,
            scratch.path(),
        )?;
        let prefix = match context {
            Some(i) => format!("{}/", crate::layout::service_folder(&spec.contexts[*i])),
            None => String::new(),
        };
        for (path, contents) in read_tree(&out)? {
            files.insert(format!("{prefix}{path}"), contents);
        }
    }
    Ok(Rendered {
        name: template.name.clone(),
        owner_is_user: template.owner_is_user,
        source: fetched.source,
        resolved,
        files,
    })
}

/// `path` against `root` (absolute or relative to the current directory), with `..`
/// taken lexically: the workspace root need not exist yet when `new` renders.
fn resolve(root: &Path, path: &Path) -> PathBuf {
    let base = std::env::current_dir().unwrap_or_default().join(root);
    let mut resolved = PathBuf::new();
    for part in base.join(path).components() {
        match part {
            std::path::Component::ParentDir => {
                resolved.pop();
            }
            std::path::Component::CurDir => {}
            other => resolved.push(other),
        }
    }
    resolved
}

struct Fetched {
    dir: PathBuf,
    source: String,
    /// The commit checked out, for a git source.
    commit: Option<String>,
}

fn fetch(template: &TeamTemplate, root: &Path, scratch: &Path) -> Result<Fetched> {
    match &template.source {
        TemplateSource::Path(path) => {
            let dir = resolve(root, Path::new(path));
            if !dir.is_dir() {
                return Err(problem(
                    template,
                    format!(
                        "`path = \"{path}\"` is not a folder (it resolves to `{}`)",
                        dir.display()
                    ),
                    "a relative `path` is relative to the workspace root; give the template's folder",
                ));
            }
            Ok(Fetched {
                dir,
                source: format!("path:{path}"),
                commit: None,
            })
        }
        TemplateSource::Git { url, rev } => {
            let dir = scratch.join("checkout");
            let commit = checkout(template, url, rev, &dir)?;
            Ok(Fetched {
                dir,
                source: format!("git:{url}@{rev}"),
                commit: Some(commit),
            })
        }
    }
}

/// Clones `url` into `dir` with the `git` command (any transport git speaks: `file://`,
/// `https`, `ssh`, with the user's own credentials and configuration), then checks `rev` (a
/// tag or commit) out there with git2; returns the commit.
fn checkout(template: &TeamTemplate, url: &str, rev: &str, dir: &Path) -> Result<String> {
    let fail = |what: String| {
        problem(
            template,
            what,
            "check `git` (a URL git can clone) and `rev` (a tag or commit in it)",
        )
    };
    let cloned = Command::new("git")
        .args(["clone", "--quiet", "--no-checkout", "--", url])
        .arg(dir)
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .map_err(|e| {
            problem(
                template,
                format!("cannot run `git` to fetch `{url}`: {e}"),
                "install git: archscaffold runs `git clone` to fetch a template's repository",
            )
        })?;
    if !cloned.status.success() {
        let why = String::from_utf8_lossy(&cloned.stderr);
        return Err(fail(format!("cannot clone `{url}`: {}", why.trim())));
    }
    let repo = git2::Repository::open(dir)
        .map_err(|e| fail(format!("cannot open the clone of `{url}`: {}", e.message())))?;
    let commit = repo
        .revparse_single(rev)
        .and_then(|object| object.peel_to_commit())
        .map_err(|e| {
            fail(format!(
                "`{rev}` is not a commit of `{url}`: {}",
                e.message()
            ))
        })?;
    let mut options = git2::build::CheckoutBuilder::new();
    options.force();
    repo.checkout_tree(commit.as_object(), Some(&mut options))
        .and_then(|()| repo.set_head_detached(commit.id()))
        .map_err(|e| fail(format!("cannot check `{rev}` out: {}", e.message())))?;
    // The template is the files, not the history: cargo-generate must not copy `.git`.
    let git_dir = dir.join(".git");
    std::fs::remove_dir_all(&git_dir).map_err(Error::io(git_dir))?;
    Ok(commit.id().to_string())
}

/// The values every template gets, then the template's own, as cargo-generate's values
/// file (`[values]`).
fn values_file(spec: &Spec, template: &TeamTemplate, context: Option<usize>) -> String {
    let mut values = toml::Table::new();
    let string = |s: &str| toml::Value::String(s.to_string());
    values.insert("system".into(), string(&spec.system.kebab));
    values.insert("bus".into(), string(spec.bus.as_str()));
    let contexts: Vec<&str> = spec
        .contexts
        .iter()
        .map(|c| c.name.kebab.as_str())
        .collect();
    values.insert("contexts".into(), string(&contexts.join(",")));
    if let Some(i) = context {
        let c = &spec.contexts[i];
        values.insert("service".into(), string(&c.name.kebab));
        values.insert("aggregate".into(), string(&c.aggregate.name.pascal));
        values.insert("grpc_port".into(), string(&c.grpc_port.to_string()));
        values.insert("metrics_port".into(), string(&c.metrics_port.to_string()));
    }
    for (key, value) in &template.values {
        let value = match value {
            TemplateValue::String(s) => string(s),
            TemplateValue::Bool(b) => toml::Value::Boolean(*b),
        };
        values.insert(key.clone(), value);
    }
    let mut file = toml::Table::new();
    file.insert("values".into(), toml::Value::Table(values));
    file.to_string()
}

/// Runs cargo-generate on `folder` into `out` in a child process with an empty
/// environment, its home in `scratch`.
fn run_cargo_generate(
    template: &TeamTemplate,
    folder: &Path,
    out: &Path,
    project: &str,
    values: &Path,
    scratch: &Path,
) -> Result<()> {
    let exe = std::env::current_exe().map_err(Error::io(PathBuf::from("archscaffold")))?;
    let home = scratch.join("home");
    std::fs::create_dir_all(&home).map_err(Error::io(home.clone()))?;
    std::fs::create_dir_all(out).map_err(Error::io(out.to_path_buf()))?;
    let output = Command::new(&exe)
        .arg(CHILD_COMMAND)
        .arg(folder)
        .arg(out)
        .arg(project)
        .arg(values)
        .env_clear()
        .env("HOME", &home)
        .env("USER", AUTHOR)
        .current_dir(scratch)
        .output()
        .map_err(Error::io(exe))?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let message = stderr
        .lines()
        .find_map(|line| line.strip_prefix(ERROR_MARKER))
        .map(str::to_string)
        .unwrap_or_else(|| {
            format!(
                "cargo-generate stopped ({}): {}",
                output.status,
                stderr.trim()
            )
        });
    Err(refusal(template, &message))
}

/// Turns cargo-generate's message into archscaffold's, with what to do about it.
fn refusal(template: &TeamTemplate, message: &str) -> Error {
    let message = message.trim_start_matches(|ch: char| !ch.is_ascii()).trim();
    if message.contains("system command") {
        // cargo-generate's own words name its flag and a temporary copy of the script.
        let script = message
            .split_whitespace()
            .find(|word| word.ends_with(".rhai:"))
            .and_then(|path| Path::new(path.trim_end_matches(':')).file_name())
            .map(|name| format!(" `{}`", name.to_string_lossy()))
            .unwrap_or_default();
        return problem(
            template,
            format!("its hook{script} calls `system::command`, which archscaffold never runs"),
            "do that step in the template's files, or in the team's CI, instead of in a hook",
        );
    }
    let help = if message.contains("not a valid value")
        || message.contains("regex")
        || message.contains("choices")
    {
        "set a value the template accepts in the entry's `[template.values]`"
    } else if message.contains("placeholder") || message.contains("default value") {
        "give the value in the entry's `[template.values]` (nothing is prompted)"
    } else {
        "fix the template or its entry in archscaffold.toml"
    };
    problem(template, message.to_string(), help)
}

fn problem(template: &TeamTemplate, message: impl Into<String>, help: &str) -> Error {
    Error::Template {
        name: template.name.clone(),
        message: message.into(),
        help: help.to_string(),
    }
}

/// Every file under `dir`, by `/`-separated relative path, `.git` left out.
fn read_tree(dir: &Path) -> Result<BTreeMap<String, Vec<u8>>> {
    let mut files = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        let entries = std::fs::read_dir(&current).map_err(Error::io(current.clone()))?;
        for entry in entries {
            let entry = entry.map_err(Error::io(current.clone()))?;
            let path = entry.path();
            if entry.file_name() == ".git" {
                continue;
            }
            if path.is_dir() {
                pending.push(path);
            } else {
                let relative = path
                    .strip_prefix(dir)
                    .expect("under dir")
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join("/");
                let contents = std::fs::read(&path).map_err(Error::io(path.clone()))?;
                files.insert(relative, contents);
            }
        }
    }
    Ok(files)
}

/// A folder's identity: the hash of its files' paths and contents, in path order.
fn tree_hash(dir: &Path) -> Result<String> {
    let mut all = Vec::new();
    for (path, contents) in read_tree(dir)? {
        all.extend_from_slice(path.as_bytes());
        all.push(0);
        all.extend_from_slice(sha256_hex(&contents).as_bytes());
        all.push(b'\n');
    }
    Ok(sha256_hex(&all))
}

/// The child's side: `archscaffold __render-template <folder> <out> <project> <values>`.
/// Renders with cargo-generate, silently and without running commands; on failure prints
/// the error on one marked line and exits 2.
pub fn run_child(args: &[String]) -> std::process::ExitCode {
    let [folder, out, project, values] = args else {
        eprintln!("{ERROR_MARKER}usage: {CHILD_COMMAND} <folder> <out> <project> <values>");
        return std::process::ExitCode::from(2);
    };
    let generate = cargo_generate::GenerateArgs {
        template_path: cargo_generate::TemplatePath {
            path: Some(folder.clone()),
            ..Default::default()
        },
        name: Some(project.clone()),
        silent: true,
        init: true,
        destination: Some(PathBuf::from(out)),
        template_values_file: Some(values.clone()),
        vcs: Some(cargo_generate::Vcs::None),
        no_workspace: true,
        no_fmt: true,
        allow_commands: false,
        overwrite: false,
        force: true,
        ..Default::default()
    };
    match cargo_generate::generate(generate) {
        Ok(_) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let message = format!("{e:#}").replace('\n', " ");
            eprintln!("{ERROR_MARKER}{message}");
            std::process::ExitCode::from(2)
        }
    }
}
