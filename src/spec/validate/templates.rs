//! `[[template]]`: a team's own templates. Their sources are read only when the workspace
//! is rendered; here each entry is checked on its own and against the others.

use std::collections::HashSet;

use toml::Spanned;

use super::Collector;
use crate::spec::model::{TeamTemplate, TemplateSource, TemplateValue};
use crate::spec::raw::RawTemplate;

/// The values archscaffold gives every template, and cargo-generate's own: a template's
/// `[template.values]` may not set them.
pub const GIVEN_VALUES: &[&str] = &[
    "system",
    "bus",
    "contexts",
    "service",
    "crate_name",
    "aggregate",
    "grpc_port",
    "metrics_port",
    "project-name",
    "project_name",
    "crate_type",
    "authors",
    "username",
    "os-arch",
    "is_init",
    "within_cargo_project",
];

pub fn build(c: &mut Collector<'_, '_>, raw: &[Spanned<RawTemplate>]) -> Vec<TeamTemplate> {
    let mut names = HashSet::new();
    let mut built = Vec::new();
    for (i, entry) in raw.iter().enumerate() {
        let field = format!("template[{i}]");
        let t = entry.get_ref();
        let name = t.name.get_ref();
        if !is_template_name(name) {
            c.error(
                format!("{field}.name"),
                t.name.span(),
                format!("`{name}` is not a template name"),
                "use lowercase letters, digits and dashes, starting with a letter, e.g. `team-ci`",
            );
        } else if !names.insert(name.clone()) {
            c.error(
                format!("{field}.name"),
                t.name.span(),
                format!("two templates are named `{name}`"),
                "give each `[[template]]` its own name",
            );
        }
        let field = format!("template `{name}`");
        let source = source(c, &field, entry);
        let subfolder = t
            .subfolder
            .as_ref()
            .and_then(|s| relative_folder(c, &field, s));
        let each_context = match &t.each {
            None => Some(false),
            Some(each) if each.get_ref() == "context" => Some(true),
            Some(each) => {
                c.error(
                    format!("{field}.each"),
                    each.span(),
                    format!("`{}` is not something a template renders for", each.get_ref()),
                    "use `each = \"context\"` (once per service), or leave it out (once, at the root)",
                );
                None
            }
        };
        let owner_is_user = match t.owner.as_ref().map(|o| (o.get_ref().as_str(), o.span())) {
            None | Some(("generator", _)) => Some(false),
            Some(("user", _)) => Some(true),
            Some((other, span)) => {
                c.error(
                    format!("{field}.owner"),
                    span,
                    format!("`{other}` is not an owner"),
                    "use `generator` (merged by `update`, the default) or `user` (written once)",
                );
                None
            }
        };
        let values = values(c, &field, t);
        if let (Some(source), Some(each_context), Some(owner_is_user)) =
            (source, each_context, owner_is_user)
        {
            built.push(TeamTemplate {
                name: name.clone(),
                source,
                subfolder,
                each_context,
                owner_is_user,
                values,
            });
        }
    }
    built
}

fn is_template_name(name: &str) -> bool {
    name.starts_with(|ch: char| ch.is_ascii_lowercase())
        && name
            .chars()
            .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-')
}

/// `path`, or `git` with `rev`: exactly one source.
fn source(
    c: &mut Collector<'_, '_>,
    field: &str,
    entry: &Spanned<RawTemplate>,
) -> Option<TemplateSource> {
    let t = entry.get_ref();
    match (&t.path, &t.git, &t.rev) {
        (Some(path), None, None) if !path.get_ref().trim().is_empty() => {
            Some(TemplateSource::Path(path.get_ref().clone()))
        }
        (Some(path), None, None) => {
            c.error(
                format!("{field}.path"),
                path.span(),
                "the template's path is empty",
                "name the template's folder, relative to the workspace root or absolute",
            );
            None
        }
        (None, Some(git), Some(rev)) => {
            let url = git.get_ref();
            if !is_git_url(url) {
                c.error(
                    format!("{field}.git"),
                    git.span(),
                    format!("`{url}` is not a git URL"),
                    "give a URL git can clone: `file:///...`, `https://...`, `ssh://...` or `user@host:path`",
                );
                return None;
            }
            if rev.get_ref().trim().is_empty() {
                c.error(
                    format!("{field}.rev"),
                    rev.span(),
                    "the template's rev is empty",
                    "give the tag or commit to render, e.g. `rev = \"v1.4.0\"`",
                );
                return None;
            }
            Some(TemplateSource::Git {
                url: url.clone(),
                rev: rev.get_ref().clone(),
            })
        }
        (None, Some(git), None) => {
            c.error(
                format!("{field}.rev"),
                git.span(),
                "a git template needs a `rev`",
                "add the tag or commit to render, e.g. `rev = \"v1.4.0\"`: a branch would change under the workspace",
            );
            None
        }
        (Some(_), Some(_), _) => {
            c.error(
                field,
                entry.span(),
                "the template has both a `path` and a `git` source",
                "keep one of them",
            );
            None
        }
        (Some(_), None, Some(rev)) => {
            c.error(
                format!("{field}.rev"),
                rev.span(),
                "`rev` goes with a `git` source, not a `path`",
                "remove `rev`, or replace `path` with `git`",
            );
            None
        }
        (None, None, _) => {
            c.error(
                field,
                entry.span(),
                "the template has no source",
                "add `path = \"<folder>\"`, or `git = \"file://...\"` with `rev`",
            );
            None
        }
    }
}

/// What `git clone` takes as a remote: a URL with a scheme, or scp-like `user@host:path`.
fn is_git_url(url: &str) -> bool {
    let scheme = ["file://", "https://", "http://", "ssh://", "git://"]
        .iter()
        .any(|s| url.starts_with(s) && url.len() > s.len());
    let scp_like = url
        .split_once(':')
        .is_some_and(|(host, path)| host.contains('@') && !host.contains('/') && !path.is_empty());
    scheme || scp_like
}

/// A folder inside the template's source: relative, and not out of it.
fn relative_folder(
    c: &mut Collector<'_, '_>,
    field: &str,
    raw: &Spanned<String>,
) -> Option<String> {
    let folder = raw.get_ref().trim_end_matches('/');
    let escapes = folder
        .split('/')
        .any(|part| part == ".." || part.is_empty());
    if folder.starts_with('/') || escapes {
        c.error(
            format!("{field}.subfolder"),
            raw.span(),
            format!(
                "`{}` is not a folder inside the template's source",
                raw.get_ref()
            ),
            "give a relative path without `..`, e.g. `subfolder = \"per-service\"`",
        );
        return None;
    }
    Some(folder.to_string())
}

/// `[template.values]`: strings and booleans, none of them a value archscaffold gives.
fn values(c: &mut Collector<'_, '_>, field: &str, t: &RawTemplate) -> Vec<(String, TemplateValue)> {
    let mut values = Vec::new();
    for (key, value) in &t.values {
        let name = key.get_ref();
        if GIVEN_VALUES.contains(&name.as_str()) {
            c.error(
                format!("{field}.values.{name}"),
                key.span(),
                format!("`{name}` is a value archscaffold gives every template"),
                format!("remove it from `[template.values]`, or name your placeholder otherwise; the given values are {}", GIVEN_VALUES.join(", ")),
            );
            continue;
        }
        match value.get_ref() {
            toml::Value::String(s) => values.push((name.clone(), TemplateValue::String(s.clone()))),
            toml::Value::Boolean(b) => values.push((name.clone(), TemplateValue::Bool(*b))),
            other => c.error(
                format!("{field}.values.{name}"),
                value.span(),
                format!(
                    "`{name}` is a {}, and a template's values are strings or booleans",
                    other.type_str()
                ),
                format!("quote it: `{name} = \"{other}\"`"),
            ),
        }
    }
    values
}

#[cfg(test)]
mod tests {
    use super::super::test_problems::{assert_one, problems_in};

    /// The `field: message (help: ...)` problems of a spec with `templates` appended.
    fn problems(templates: &str) -> Vec<String> {
        problems_in(
            &format!("name = \"shop\"\n[contexts.orders]\n{templates}"),
            "shop.toml",
        )
    }

    #[test]
    fn a_path_template_and_a_file_git_template_are_accepted() {
        let spec = "[[template]]\nname = \"a\"\npath = \"../extras\"\n\
                    [[template]]\nname = \"b\"\ngit = \"file:///srv/x.git\"\nrev = \"v1\"\neach = \"context\"\n\
                    [[template]]\nname = \"c\"\ngit = \"https://git.example.com/x.git\"\nrev = \"v1\"\n\
                    [[template]]\nname = \"d\"\ngit = \"git@git.example.com:team/x.git\"\nrev = \"v1\"\n";
        assert_eq!(problems(spec), Vec::<String>::new());
    }

    #[test]
    fn each_source_mistake_names_the_template_and_the_fix() {
        assert_one(
            problems("[[template]]\nname = \"a\"\n"),
            "template `a`: the template has no source",
        );
        assert_one(
            problems("[[template]]\nname = \"a\"\ngit = \"file:///x\"\n"),
            "template `a`.rev: a git template needs a `rev`",
        );
        assert_one(
            problems(
                "[[template]]\nname = \"a\"\npath = \"x\"\ngit = \"file:///x\"\nrev = \"v1\"\n",
            ),
            "both a `path` and a `git` source",
        );
        assert_one(
            problems("[[template]]\nname = \"a\"\npath = \"x\"\nrev = \"v1\"\n"),
            "`rev` goes with a `git` source",
        );
        assert_one(
            problems("[[template]]\nname = \"a\"\ngit = \"../x.git\"\nrev = \"v1\"\n"),
            "`../x.git` is not a git URL",
        );
    }

    #[test]
    fn names_are_checked_and_unique() {
        assert_one(
            problems("[[template]]\nname = \"Team CI\"\npath = \"x\"\n"),
            "`Team CI` is not a template name",
        );
        assert_one(
            problems(
                "[[template]]\nname = \"a\"\npath = \"x\"\n[[template]]\nname = \"a\"\npath = \"y\"\n",
            ),
            "two templates are named `a`",
        );
    }

    #[test]
    fn each_owner_subfolder_and_values_are_checked() {
        assert_one(
            problems("[[template]]\nname = \"a\"\npath = \"x\"\neach = \"saga\"\n"),
            "`saga` is not something a template renders for",
        );
        assert_one(
            problems("[[template]]\nname = \"a\"\npath = \"x\"\nowner = \"team\"\n"),
            "`team` is not an owner",
        );
        assert_one(
            problems("[[template]]\nname = \"a\"\npath = \"x\"\nsubfolder = \"../up\"\n"),
            "not a folder inside the template's source",
        );
        assert_one(
            problems(
                "[[template]]\nname = \"a\"\npath = \"x\"\n[template.values]\nservice = \"x\"\n",
            ),
            "`service` is a value archscaffold gives every template",
        );
        assert_one(
            problems("[[template]]\nname = \"a\"\npath = \"x\"\n[template.values]\nreplicas = 3\n"),
            "`replicas` is a integer, and a template's values are strings or booleans",
        );
    }
}
