//! The plan: every output file in memory (path → bytes and owner), built from the spec and
//! the blueprint without touching the disk. `write` puts it on disk; `--dry-run` prints it.

use std::collections::BTreeMap;

use crate::blueprint::{Blueprint, Each, TEMPLATE_SUFFIX};
use crate::error::{Error, Result};
use crate::format::{self, Formatted};
use crate::lock;
use crate::openapi;
use crate::ownership::{self, Owner};
use crate::render::Renderer;
use crate::spec::{self, Spec};

/// The spec file every generated workspace keeps as its source of truth.
pub const SPEC_FILE: &str = "archscaffold.toml";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedFile {
    pub contents: Vec<u8>,
    pub owner: Owner,
}

#[derive(Debug, Clone)]
pub struct Plan {
    /// Output paths relative to the workspace root, `/`-separated, sorted.
    pub files: BTreeMap<String, PlannedFile>,
    pub formatted: Formatted,
}

impl Plan {
    pub fn build(spec: &Spec, blueprint: &Blueprint) -> Result<Plan> {
        let renderer = Renderer::new()?;
        let mut plan = Plan {
            files: BTreeMap::new(),
            formatted: Formatted::Yes,
        };
        for set in &blueprint.manifest.sets {
            if set.bus.as_deref().is_some_and(|b| b != spec.bus.as_str()) {
                continue;
            }
            let globals: Vec<liquid::Object> = match set.each {
                None => vec![Renderer::globals(spec, None)?],
                Some(Each::Context) => spec
                    .contexts
                    .iter()
                    .map(|c| Renderer::globals(spec, Some(c)))
                    .collect::<Result<_>>()?,
            };
            for template in blueprint.templates.iter().filter(|t| t.set == set.folder) {
                let name = format!("{}/{}", set.folder, template.path);
                for g in &globals {
                    let (path, contents) = render_template(&renderer, &name, template, g)?;
                    // A rendered template that comes out blank is how a blueprint leaves a
                    // file out for some specs.
                    let Some(contents) = contents else { continue };
                    let owner = ownership::owner_of(&path, &blueprint.manifest.owners.user);
                    let contents = ownership::with_header(&path, &contents, owner);
                    plan.insert(&name, path, PlannedFile { contents, owner })?;
                }
            }
        }
        plan.insert_openapi(spec)?;
        plan.formatted = format::rust_files(&mut plan.files)?;
        let spec_text = spec::to_toml(spec);
        plan.insert(
            "spec",
            SPEC_FILE.to_string(),
            PlannedFile {
                contents: spec_text.clone().into_bytes(),
                owner: Owner::User,
            },
        )?;
        let lock_text = lock::render(&spec_text, &plan.files);
        plan.insert(
            "lock",
            lock::LOCK_FILE.to_string(),
            PlannedFile {
                contents: lock_text.into_bytes(),
                owner: Owner::Generator,
            },
        )?;
        Ok(plan)
    }

    /// The gateway's OpenAPI document: JSON for the gateway to serve, YAML for the docs.
    /// A blueprint without a gateway gets none.
    fn insert_openapi(&mut self, spec: &Spec) -> Result<()> {
        if !self.files.contains_key("gateway/Cargo.toml") {
            return Ok(());
        }
        let document = openapi::document(spec);
        for (path, text) in [
            (openapi::JSON_PATH, openapi::to_json(&document)),
            (openapi::YAML_PATH, openapi::to_yaml(&document)),
        ] {
            let contents = ownership::with_header(path, text.as_bytes(), Owner::Generator);
            self.insert(
                "openapi",
                path.to_string(),
                PlannedFile {
                    contents,
                    owner: Owner::Generator,
                },
            )?;
        }
        Ok(())
    }

    fn insert(&mut self, from: &str, path: String, file: PlannedFile) -> Result<()> {
        if self.files.insert(path.clone(), file).is_some() {
            return Err(Error::Blueprint(format!(
                "{from}: two templates write `{path}`; make their paths distinct"
            )));
        }
        Ok(())
    }
}

fn render_template(
    renderer: &Renderer,
    name: &str,
    template: &crate::blueprint::Template,
    globals: &liquid::Object,
) -> Result<(String, Option<Vec<u8>>)> {
    let (raw_path, is_template) = match template.path.strip_suffix(TEMPLATE_SUFFIX) {
        Some(p) => (p, true),
        None => (template.path.as_str(), false),
    };
    let path = if raw_path.contains("{{") || raw_path.contains("{%") {
        renderer.render(name, raw_path, globals)?
    } else {
        raw_path.to_string()
    };
    check_output_path(name, &path)?;
    if !is_template {
        return Ok((path, Some(template.contents.clone())));
    }
    let text = std::str::from_utf8(&template.contents)
        .map_err(|_| Error::Blueprint(format!("{name}: a .liquid template must be UTF-8")))?;
    let out = renderer.render(name, text, globals)?;
    Ok((path, (!out.trim().is_empty()).then(|| out.into_bytes())))
}

/// A rendered path must stay inside the workspace.
fn check_output_path(name: &str, path: &str) -> Result<()> {
    let bad = path.is_empty()
        || path.starts_with('/')
        || path.contains('\\')
        || path
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..");
    if bad {
        return Err(Error::Blueprint(format!(
            "{name}: renders to `{path}`, which is not a relative path inside the workspace"
        )));
    }
    Ok(())
}
