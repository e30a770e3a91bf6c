//! The plan: every output file in memory (path → bytes and owner), built from the spec and
//! the blueprint without touching the disk. `write` puts it on disk; `--dry-run` prints it.

use std::collections::BTreeMap;

use indexmap::IndexMap;

use crate::blueprint::{Blueprint, Each, TEMPLATE_SUFFIX};
use crate::error::{Error, Result};
use crate::format::{self, Formatted};
use crate::layout::{self, LOCK_FILE, OPENAPI, SPEC_FILE};
use crate::lock::{self, Columns, TemplateRecord};
use crate::migrations;
use crate::openapi;
use crate::ownership::{self, Owner, PlannedFile};
use crate::platform::Recorded;
use crate::render::{Globals, Renderer, View, render_parsed};
use crate::spec::{self, Spec};
use crate::team_template::Rendered;

#[derive(Debug, Clone)]
pub struct Plan {
    /// Output paths relative to the workspace root, `/`-separated, sorted.
    pub files: BTreeMap<String, PlannedFile>,
    pub formatted: Formatted,
    /// The vendored platform among `files`, as the lock records it.
    pub platform: Option<Recorded>,
    /// The team templates whose output is among `files`, as the lock records them.
    pub templates: Vec<TemplateRecord>,
}

impl Plan {
    /// Every file of a new workspace, `archscaffold.lock` included; `team` is what the
    /// spec's own templates rendered (`team_template::render_all`).
    pub fn build(spec: &Spec, blueprint: &Blueprint, team: &[Rendered]) -> Result<Plan> {
        let mut plan = Plan::render(spec, blueprint, team)?;
        plan.seal(&migrations::tables_of(spec))?;
        Ok(plan)
    }

    /// Every file but `archscaffold.lock`, which `seal` adds once the files are final
    /// (`update` first keeps the migrations a workspace already has).
    pub fn render(spec: &Spec, blueprint: &Blueprint, team: &[Rendered]) -> Result<Plan> {
        let renderer = Renderer::new()?;
        let members = crate::team_template::crates(team);
        let globals = Globals::new(spec, blueprint.platform.as_ref(), &members)?;
        let mut plan = Plan {
            files: BTreeMap::new(),
            formatted: Formatted::Yes,
            platform: None,
            templates: team.iter().map(Rendered::record).collect(),
        };
        // Templates are parsed once each, then every (template, view) pair is rendered;
        // both on every core: parsing is most of a small workspace's generation, and
        // rendering of a large one's (besides rustfmt).
        let mut sources = Vec::new();
        for set in &blueprint.manifest.sets {
            if set.bus.as_deref().is_some_and(|b| b != spec.bus.as_str()) {
                continue;
            }
            let views: Vec<View<'_>> = match set.each {
                None => vec![globals.view(None)],
                Some(Each::Context) => (0..spec.contexts.len())
                    .map(|i| globals.view(Some(i)))
                    .collect(),
            };
            for template in blueprint.templates.iter().filter(|t| t.set == set.folder) {
                let name = format!("{}/{}", set.folder, template.path);
                sources.push((name, template, views.clone()));
            }
        }
        let prepared = on_every_core(&sources, |(name, template, views)| {
            let when = blueprint
                .manifest
                .condition_of(&template.set, &template.path);
            Ok((
                name.clone(),
                Prepared::new(&renderer, name, template, when)?,
                views.clone(),
            ))
        })?;
        let jobs: Vec<(&str, &Prepared<'_>, &View<'_>)> = prepared
            .iter()
            .flat_map(|(name, parsed, views)| views.iter().map(move |v| (name.as_str(), parsed, v)))
            .collect();
        let rendered = on_every_core(&jobs, |(name, prepared, view)| {
            Ok((*name, prepared.render(name, view)?))
        })?;
        for (name, rendered) in rendered {
            // A file whose manifest condition does not hold for this spec.
            let Some((path, contents)) = rendered else {
                continue;
            };
            let owner = ownership::owner_of(&path, &blueprint.manifest.owners.user);
            let contents = ownership::with_header(&path, &contents, owner);
            plan.insert(name, path, PlannedFile { contents, owner })?;
        }
        plan.insert_openapi(spec)?;
        plan.insert_team_templates(team)?;
        plan.formatted = format::rust_files(&mut plan.files)?;
        // After formatting: the crate is rustfmt-clean as it ships (the generator's own
        // `cargo fmt` keeps it so), and copied code was most of what formatting cost.
        if let Some(chassis) = &blueprint.platform {
            plan.platform = Some(chassis.recorded());
            for (path, contents) in &chassis.files {
                plan.insert(
                    "platform",
                    layout::vendored_platform_file(path),
                    PlannedFile {
                        contents: contents.clone(),
                        owner: Owner::Vendored,
                    },
                )?;
            }
        }
        plan.insert(
            "spec",
            SPEC_FILE.to_string(),
            PlannedFile {
                contents: spec::to_toml(spec).into_bytes(),
                owner: Owner::User,
            },
        )?;
        Ok(plan)
    }

    /// Adds `archscaffold.lock`: the hash of every planned file and the columns that the
    /// planned migrations create.
    pub fn seal(&mut self, tables: &IndexMap<String, Columns>) -> Result<()> {
        let spec_text = &self.files[SPEC_FILE].contents;
        let lock_text = lock::render(
            &String::from_utf8_lossy(spec_text),
            &self.files,
            self.platform.as_ref(),
            tables,
            &self.templates,
        );
        self.files.remove(LOCK_FILE);
        self.insert(
            "lock",
            LOCK_FILE.to_string(),
            PlannedFile {
                contents: lock_text.into_bytes(),
                owner: Owner::Generator,
            },
        )
    }

    /// The files as generated that a later `update` merges against: every generator-owned
    /// file but the lock (see `base`).
    pub fn pristine(&self) -> impl Iterator<Item = (&String, &PlannedFile)> {
        self.files
            .iter()
            .filter(|(path, file)| file.owner == Owner::Generator && *path != LOCK_FILE)
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
            (OPENAPI, openapi::to_yaml(&document)),
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

    /// A team template's files join the plan as generated (or user-owned) output. One that
    /// writes where archscaffold or another template writes is refused: neither file can
    /// be merged into the other.
    fn insert_team_templates(&mut self, team: &[Rendered]) -> Result<()> {
        let mut written_by: BTreeMap<&str, &str> = BTreeMap::new();
        for rendered in team {
            let owner = if rendered.owner_is_user {
                Owner::User
            } else {
                Owner::Generator
            };
            for (path, contents) in &rendered.files {
                let reserved = path == SPEC_FILE
                    || path == LOCK_FILE
                    || path.starts_with(".archscaffold/")
                    || layout::in_vendored_platform(path).is_some();
                let other = match written_by.get(path.as_str()) {
                    Some(other) => Some(format!("template `{other}` writes it too")),
                    None if reserved || self.files.contains_key(path) => {
                        Some("archscaffold generates it".to_string())
                    }
                    None => None,
                };
                if let Some(other) = other {
                    return Err(Error::Template {
                        name: rendered.name.clone(),
                        message: format!("it writes `{path}`, and {other}"),
                        help: "rename or move that file in the template: a template adds files, it does not replace them".to_string(),
                    });
                }
                written_by.insert(path, &rendered.name);
                let contents = ownership::with_header(path, contents, owner);
                self.insert(
                    &rendered.name,
                    path.clone(),
                    PlannedFile { contents, owner },
                )?;
            }
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

/// A blueprint file with its Liquid parsed once: a per-context file is rendered once per
/// context, and parsing is most of the cost of rendering.
/// `work` on each item, on as many threads as there are cores; the results keep the
/// items' order, so the plan is the same however the work was split.
fn on_every_core<T: Sync, R: Send>(
    items: &[T],
    work: impl Fn(&T) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, items.len().max(1));
    let chunk = items.len().div_ceil(workers).max(1);
    let work = &work;
    let parts: Vec<Result<Vec<R>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(work).collect::<Result<Vec<R>>>()))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a generation thread panicked"))
            .collect()
    });
    let mut all = Vec::with_capacity(items.len());
    for part in parts {
        all.extend(part?);
    }
    Ok(all)
}

struct Prepared<'a> {
    path: OutputPath,
    /// The manifest's condition for this file, as `{% if <when> %}yes{% endif %}`.
    when: Option<liquid::Template>,
    /// `None` for a file copied verbatim.
    body: Option<liquid::Template>,
    source: &'a crate::blueprint::Template,
}

enum OutputPath {
    Fixed(String),
    /// A path with Liquid in it, e.g. `services/{{ context.name.kebab }}/Cargo.toml`.
    Template(liquid::Template),
}

impl<'a> Prepared<'a> {
    fn new(
        renderer: &Renderer,
        name: &str,
        source: &'a crate::blueprint::Template,
        when: Option<&str>,
    ) -> Result<Prepared<'a>> {
        let when = when
            .map(|when| {
                renderer.parse(
                    &format!("{name} (its condition in manifest.toml)"),
                    &format!("{{% if {when} %}}yes{{% endif %}}"),
                )
            })
            .transpose()?;
        let (raw_path, is_template) = match source.path.strip_suffix(TEMPLATE_SUFFIX) {
            Some(p) => (p, true),
            None => (source.path.as_str(), false),
        };
        let path = if raw_path.contains("{{") || raw_path.contains("{%") {
            OutputPath::Template(renderer.parse(name, raw_path)?)
        } else {
            OutputPath::Fixed(raw_path.to_string())
        };
        let body = if is_template {
            let text = std::str::from_utf8(&source.contents).map_err(|_| {
                Error::Blueprint(format!("{name}: a .liquid template must be UTF-8"))
            })?;
            Some(renderer.parse(name, text)?)
        } else {
            None
        };
        Ok(Prepared {
            path,
            when,
            body,
            source,
        })
    }

    /// The output path and contents, or `None` when the file's condition does not hold.
    fn render(&self, name: &str, globals: &View<'_>) -> Result<Option<(String, Vec<u8>)>> {
        if let Some(when) = &self.when
            && render_parsed(name, when, globals)? != "yes"
        {
            return Ok(None);
        }
        let path = match &self.path {
            OutputPath::Fixed(path) => path.clone(),
            OutputPath::Template(template) => render_parsed(name, template, globals)?,
        };
        check_output_path(name, &path)?;
        let Some(body) = &self.body else {
            return Ok(Some((path, self.source.contents.clone())));
        };
        let out = render_parsed(name, body, globals)?;
        if out.trim().is_empty() {
            return Err(Error::Blueprint(format!(
                "{name}: renders blank for `{path}`\n  = help: a file that ships only for some specs says when in manifest.toml: [[only]] file = \"{name}\", when = \"<a Liquid condition>\""
            )));
        }
        Ok(Some((path, out.into_bytes())))
    }
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
