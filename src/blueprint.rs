//! Blueprints: the template tree that mirrors the generated workspace.
//!
//! The default tree under `blueprints/` is embedded in the binary; `--blueprints DIR` reads
//! one from disk instead. `manifest.toml` at its root says which folder is rendered once
//! and which once per bounded context, which files ship only for some specs, and which
//! output files belong to the user.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use include_dir::{Dir, include_dir};
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::platform::Chassis;

static EMBEDDED: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/blueprints");

/// Files ending in this suffix are rendered with Liquid; all others are copied verbatim.
pub const TEMPLATE_SUFFIX: &str = ".liquid";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    #[serde(rename = "set")]
    pub sets: Vec<Set>,
    /// Templates that ship only when a condition on the spec holds.
    #[serde(rename = "only", default)]
    pub conditions: Vec<Condition>,
    #[serde(default)]
    pub owners: Owners,
    /// The folder of the chassis crate, vendored whole rather than rendered.
    #[serde(default)]
    pub platform: Option<PlatformFolder>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlatformFolder {
    pub folder: String,
}

/// A template that ships only for some specs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    /// The template, as `<folder>/<path>`.
    pub file: String,
    /// A Liquid condition over the globals the template sees, e.g. `context.sagas.size > 0`.
    pub when: String,
}

impl Manifest {
    /// The condition under which `set/path` ships, if it has one.
    pub fn condition_of(&self, set: &str, path: &str) -> Option<&str> {
        self.conditions
            .iter()
            .find(|c| c.file.split_once('/') == Some((set, path)))
            .map(|c| c.when.as_str())
    }
}

/// One folder of the blueprint tree and how often it is rendered.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Set {
    pub folder: String,
    /// `"context"` renders the folder once per bounded context with `context` bound.
    #[serde(default)]
    pub each: Option<Each>,
    /// Ships only when the spec's bus is this one.
    #[serde(default)]
    pub bus: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Each {
    Context,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Owners {
    /// Output paths written once and never overwritten; `*` matches one path segment.
    #[serde(default)]
    pub user: Vec<String>,
}

/// One template file: the set it belongs to, its path inside that set, its bytes.
#[derive(Debug, Clone)]
pub struct Template {
    pub set: String,
    pub path: String,
    pub contents: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct Blueprint {
    pub manifest: Manifest,
    pub templates: Vec<Template>,
    /// The chassis every workspace vendors, if the blueprint ships one.
    pub platform: Option<Chassis>,
}

impl Blueprint {
    /// The blueprints compiled into this binary.
    pub fn embedded() -> Result<Blueprint> {
        let mut files = Vec::new();
        collect_embedded(&EMBEDDED, &mut files);
        Blueprint::from_files(files, "embedded blueprints")
    }

    /// A blueprint tree on disk, as given to `--blueprints`.
    pub fn from_dir(root: &Path) -> Result<Blueprint> {
        if !root.is_dir() {
            return Err(Error::Blueprint(format!(
                "`{}` is not a directory\n  = help: pass --blueprints a folder laid out like this repository's `blueprints/`",
                root.display()
            )));
        }
        let mut files = Vec::new();
        collect_disk(root, root, &mut files)?;
        Blueprint::from_files(files, &root.display().to_string())
    }

    fn from_files(mut files: Vec<(String, Vec<u8>)>, origin: &str) -> Result<Blueprint> {
        files.sort_by(|a, b| a.0.cmp(&b.0));
        let manifest_text = files
            .iter()
            .find(|(p, _)| p == "manifest.toml")
            .map(|(_, c)| String::from_utf8_lossy(c).into_owned())
            .ok_or_else(|| Error::Blueprint(format!("{origin}: no manifest.toml at the root")))?;
        let manifest: Manifest = toml::from_str(&manifest_text)
            .map_err(|e| Error::Blueprint(format!("{origin}/manifest.toml: {e}")))?;
        let mut templates = Vec::new();
        let platform_folder = manifest.platform.as_ref().map(|p| p.folder.as_str());
        let mut platform_files = BTreeMap::new();
        for (path, contents) in files {
            let Some((set, rest)) = path.split_once('/') else {
                continue; // files at the root (the manifest, a README) are not output
            };
            if Some(set) == platform_folder {
                platform_files.insert(rest.to_string(), contents);
            } else if manifest.sets.iter().any(|s| s.folder == set) {
                templates.push(Template {
                    set: set.to_string(),
                    path: rest.to_string(),
                    contents,
                });
            }
        }
        for (i, condition) in manifest.conditions.iter().enumerate() {
            let known = templates
                .iter()
                .any(|t| condition.file.split_once('/') == Some((t.set.as_str(), t.path.as_str())));
            if !known {
                return Err(Error::Blueprint(format!(
                    "{origin}/manifest.toml: [[only]] names `{}`, which is no template of a listed folder\n  = help: write the template's path from the blueprint root, `<folder>/<path>.liquid`",
                    condition.file
                )));
            }
            if manifest.conditions[..i]
                .iter()
                .any(|c| c.file == condition.file)
            {
                return Err(Error::Blueprint(format!(
                    "{origin}/manifest.toml: [[only]] names `{}` twice; give it one condition (`and`, `or`)",
                    condition.file
                )));
            }
        }
        for set in &manifest.sets {
            if !templates.iter().any(|t| t.set == set.folder) {
                return Err(Error::Blueprint(format!(
                    "{origin}: manifest.toml lists folder `{}`, which has no files",
                    set.folder
                )));
            }
        }
        let platform = match platform_folder {
            None => None,
            Some(folder) => Some(Chassis::new(platform_files, &format!("{origin}/{folder}"))?),
        };
        Ok(Blueprint {
            manifest,
            templates,
            platform,
        })
    }
}

fn collect_embedded(dir: &Dir<'static>, out: &mut Vec<(String, Vec<u8>)>) {
    for file in dir.files() {
        out.push((slash_path(file.path()), file.contents().to_vec()));
    }
    for sub in dir.dirs() {
        collect_embedded(sub, out);
    }
}

fn collect_disk(root: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(Error::io(dir))?;
    for entry in entries {
        let path: PathBuf = entry.map_err(Error::io(dir))?.path();
        // What cargo leaves beside a crate built on its own is not part of a blueprint.
        if path
            .file_name()
            .is_some_and(|n| n == "target" || n == "Cargo.lock")
        {
            continue;
        }
        if path.is_dir() {
            collect_disk(root, &path, out)?;
        } else {
            let contents = std::fs::read(&path).map_err(Error::io(&path))?;
            let rel = path.strip_prefix(root).expect("walked from root");
            out.push((slash_path(rel), contents));
        }
    }
    Ok(())
}

fn slash_path(p: &Path) -> String {
    p.components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_blueprint_has_a_manifest_and_templates_for_every_set() {
        let bp = Blueprint::embedded().unwrap();
        assert!(
            bp.manifest
                .sets
                .iter()
                .any(|s| s.each == Some(Each::Context))
        );
        for set in &bp.manifest.sets {
            assert!(
                bp.templates.iter().any(|t| t.set == set.folder),
                "{}",
                set.folder
            );
        }
    }
}
