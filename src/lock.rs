//! `archscaffold.lock`: the generator version, a hash of the spec, a hash and owner for
//! every generated file, and the columns each service's migrations have created. `update`
//! reads it to tell a file the user edited from one still as generated, to know which
//! files it generated before (a deleted user file is not brought back), and to turn a
//! changed field list into a new migration rather than an edited one. The vendored
//! platform crate is recorded apart, by version and hashes (`[platform]`): it is replaced
//! whole, never merged.

use std::collections::BTreeMap;
use std::path::Path;

use indexmap::IndexMap;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::ownership::{Owner, PlannedFile};
use crate::platform::Recorded;
use crate::spec::model::FieldType;

/// Bumped when the lock file's layout changes. 2 added `[tables]`, 3 `[platform]` (whose
/// files left `[files]`), 4 `[[template]]` (an older archscaffold then says the lock is
/// newer, rather than that it has an unknown key).
pub const LOCK_FORMAT: u32 = 4;

pub fn sha256_hex(bytes: &[u8]) -> String {
    crate::hex::lower(&Sha256::digest(bytes))
}

/// The columns of one service's aggregate table besides `id` and `created_at`, in order.
pub type Columns = IndexMap<String, FieldType>;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedFile {
    pub owner: Owner,
    pub sha256: String,
}

/// A team template (`[[template]]`) as last rendered: its name, its source as the spec
/// gave it, and what that resolved to (a commit, or the hash of a folder's files).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateRecord {
    pub name: String,
    pub source: String,
    pub resolved: String,
}

#[derive(Debug, Clone)]
pub struct Lock {
    pub format: u32,
    /// `archscaffold <version>`.
    pub generator: String,
    pub spec_sha256: String,
    pub files: BTreeMap<String, LockedFile>,
    /// Per service directory (`services/<dir>`), what its migrations create. `None` in a
    /// format-1 lock, which did not record it.
    pub tables: Option<IndexMap<String, Columns>>,
    /// The vendored platform. `None` before format 3, whose locks list its files in
    /// `files` like any generated file.
    pub platform: Option<Recorded>,
    /// The team templates last rendered (format 4 and later).
    pub templates: Vec<TemplateRecord>,
}

impl Lock {
    /// The version part of `generator`.
    pub fn version(&self) -> &str {
        self.generator
            .strip_prefix("archscaffold ")
            .unwrap_or(&self.generator)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLock {
    format: u32,
    generator: String,
    spec_sha256: String,
    #[serde(default)]
    files: BTreeMap<String, LockedFile>,
    #[serde(default)]
    tables: Option<IndexMap<String, IndexMap<String, String>>>,
    #[serde(default)]
    platform: Option<RawPlatform>,
    #[serde(default, rename = "template")]
    templates: Vec<TemplateRecord>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlatform {
    source: String,
    version: String,
    tree_sha256: String,
    files: BTreeMap<String, String>,
}

pub fn parse(text: &str, path: &Path) -> Result<Lock> {
    let broken = |why: String| Error::LockUnreadable {
        path: path.to_path_buf(),
        why,
    };
    let raw: RawLock = toml::from_str(text).map_err(|e| broken(e.message().to_string()))?;
    if raw.format > LOCK_FORMAT {
        return Err(broken(format!(
            "format {} is newer than this archscaffold understands ({LOCK_FORMAT})",
            raw.format
        )));
    }
    let tables = match raw.tables {
        None => None,
        Some(tables) => {
            let mut out = IndexMap::new();
            for (service, columns) in tables {
                let mut parsed = Columns::new();
                for (column, kind) in columns {
                    let kind = FieldType::parse(&kind).ok_or_else(|| {
                        broken(format!("tables.{service}.{column}: unknown type `{kind}`"))
                    })?;
                    parsed.insert(column, kind);
                }
                out.insert(service, parsed);
            }
            Some(out)
        }
    };
    let platform = match raw.platform {
        None => None,
        Some(p) => {
            if p.source != "vendored" {
                return Err(broken(format!(
                    "platform.source `{}`: this archscaffold knows only `vendored`",
                    p.source
                )));
            }
            let recorded = Recorded::from_hashes(p.version, p.files);
            if recorded.tree_sha256 != p.tree_sha256 {
                return Err(broken(
                    "platform.tree_sha256 is not the hash of platform.files".to_string(),
                ));
            }
            Some(recorded)
        }
    };
    Ok(Lock {
        format: raw.format,
        generator: raw.generator,
        spec_sha256: raw.spec_sha256,
        files: raw.files,
        tables,
        platform,
        templates: raw.templates,
    })
}

pub fn render(
    spec_text: &str,
    files: &BTreeMap<String, PlannedFile>,
    platform: Option<&Recorded>,
    tables: &IndexMap<String, Columns>,
    templates: &[TemplateRecord],
) -> String {
    let mut out = String::new();
    out.push_str(
        "# archscaffold.lock: what archscaffold generated here. Do not edit; `archscaffold update`\n",
    );
    out.push_str(
        "# reads it to tell a file you changed from one as generated, and which columns exist.\n",
    );
    out.push_str(&format!("format = {LOCK_FORMAT}\n"));
    out.push_str(&format!(
        "generator = \"archscaffold {}\"\n",
        crate::VERSION
    ));
    out.push_str(&format!(
        "spec_sha256 = \"{}\"\n\n[files]\n",
        sha256_hex(spec_text.as_bytes())
    ));
    for (path, file) in files.iter().filter(|(_, f)| f.owner != Owner::Vendored) {
        out.push_str(&format!(
            "\"{path}\" = {{ owner = \"{}\", sha256 = \"{}\" }}\n",
            file.owner.as_str(),
            sha256_hex(&file.contents)
        ));
    }
    out.push_str(
        "\n# The columns each service's migrations create, besides id and created_at.\n[tables]\n",
    );
    for (service, columns) in tables {
        let columns: Vec<String> = columns
            .iter()
            .map(|(name, kind)| format!("{name} = \"{}\"", kind.as_str()))
            .collect();
        if columns.is_empty() {
            out.push_str(&format!("{service} = {{}}\n"));
        } else {
            out.push_str(&format!("{service} = {{ {} }}\n", columns.join(", ")));
        }
    }
    if let Some(platform) = platform {
        out.push_str(&format!(
            "\n# The vendored platform crate ({}): replaced whole by `archscaffold update`, never\n# merged; `archscaffold check` names any file that is not as recorded here.\n[platform]\nsource = \"vendored\"\nversion = \"{}\"\ntree_sha256 = \"{}\"\n\n[platform.files]\n",
            crate::layout::VENDORED_PLATFORM,
            platform.version,
            platform.tree_sha256
        ));
        for (path, sha) in &platform.files {
            out.push_str(&format!("\"{path}\" = \"{sha}\"\n"));
        }
    }
    if !templates.is_empty() {
        out.push_str("\n# The team templates as last rendered: `archscaffold check` renders them again and\n# reports a source that changed since.\n");
    }
    for template in templates {
        let string = |s: &str| toml::Value::String(s.to_string()).to_string();
        out.push_str(&format!(
            "[[template]]\nname = {}\nsource = {}\nresolved = {}\n",
            string(&template.name),
            string(&template.source),
            string(&template.resolved)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rendered_lock_parses_back() {
        let mut files = BTreeMap::new();
        files.insert(
            "a/b.rs".to_string(),
            PlannedFile {
                contents: b"x".to_vec(),
                owner: Owner::User,
            },
        );
        let mut tables = IndexMap::new();
        let mut columns = Columns::new();
        columns.insert("total_cents".to_string(), FieldType::I64);
        columns.insert("note".to_string(), FieldType::String);
        tables.insert("order-items".to_string(), columns.clone());
        tables.insert("billing".to_string(), Columns::new());
        let mut platform_files = BTreeMap::new();
        platform_files.insert(
            "Cargo.toml".to_string(),
            b"[package]\nversion = \"0.9.0\"\n".to_vec(),
        );
        platform_files.insert("src/lib.rs".to_string(), b"//! x\n".to_vec());
        let platform = Recorded::of(&platform_files);
        let templates = [TemplateRecord {
            name: "team-ci".into(),
            source: "git:file:///srv/x.git@v1".into(),
            resolved: "0123abcd".into(),
        }];
        let text = render("spec", &files, Some(&platform), &tables, &templates);
        assert_eq!(parse(&text, Path::new("l")).unwrap().templates, templates);
        let lock = parse(&text, Path::new("archscaffold.lock")).unwrap();
        assert_eq!(lock.platform.as_ref(), Some(&platform));
        assert_eq!(platform.version, "0.9.0");
        let tampered = text.replace(&platform.files["src/lib.rs"], &sha256_hex(b"y"));
        let err = parse(&tampered, Path::new("archscaffold.lock")).unwrap_err();
        assert!(err.to_string().contains("tree_sha256"), "{err}");
        assert_eq!(lock.format, LOCK_FORMAT);
        assert_eq!(lock.version(), crate::VERSION);
        assert_eq!(lock.files["a/b.rs"].owner, Owner::User);
        assert_eq!(lock.files["a/b.rs"].sha256, sha256_hex(b"x"));
        let parsed = lock.tables.unwrap();
        assert_eq!(parsed["order-items"], columns);
        assert!(parsed["billing"].is_empty());
        assert_eq!(
            parsed.keys().collect::<Vec<_>>(),
            ["order-items", "billing"]
        );
    }

    #[test]
    fn a_format_one_lock_has_no_tables() {
        let text = "format = 1\ngenerator = \"archscaffold 0.1.0\"\nspec_sha256 = \"00\"\n\n[files]\n\"x\" = { owner = \"generator\", sha256 = \"11\" }\n";
        let lock = parse(text, Path::new("archscaffold.lock")).unwrap();
        assert!(lock.tables.is_none());
        assert!(lock.platform.is_none());
        assert_eq!(lock.version(), "0.1.0");
    }
}
