//! Errors and the single place that turns them into exit codes.
//!
//! Anything the user can fix by changing their input (spec, flags, target directory) is a
//! usage error and exits with 2; anything else (I/O, git, a broken blueprint) exits with 1.

use std::fmt;
use std::path::PathBuf;

/// Where in the user's input a problem sits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A position in a spec file, 1-based.
    File {
        path: String,
        line: usize,
        col: usize,
    },
    /// A command-line flag such as `--contexts`.
    Flag(&'static str),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File { path, line, col } => write!(f, "{path}:{line}:{col}"),
            Origin::Flag(flag) => f.write_str(flag),
        }
    }
}

/// One problem with the user's input: which field, where, what is wrong and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub field: String,
    pub origin: Origin,
    pub message: String,
    pub help: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "error: {}: {}", self.field, self.message)?;
        writeln!(f, "  --> {}", self.origin)?;
        write!(f, "  = help: {}", self.help)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// One or more problems in the spec or the flags that build it.
    #[error("{}", render_diagnostics(.0))]
    Invalid(Vec<Diagnostic>),
    #[error("cannot read spec `{path}`: {source}\n  = help: check the path given to --spec")]
    SpecUnreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "target `{0}` exists and is not empty\n  = help: choose another directory with --out, or pass --force to write the generated files over it"
    )]
    TargetNotEmpty(PathBuf),
    #[error("target `{0}` exists and is not a directory\n  = help: choose another path with --out")]
    TargetNotDirectory(PathBuf),
    #[error("blueprint error: {0}")]
    Blueprint(String),
    #[error("cannot write `{path}`: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("git: {0}")]
    Git(#[from] git2::Error),
}

impl Error {
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }

    /// 2 for input the user can fix, 1 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Invalid(_)
            | Error::SpecUnreadable { .. }
            | Error::TargetNotEmpty(_)
            | Error::TargetNotDirectory(_) => 2,
            Error::Blueprint(_) | Error::Io { .. } | Error::Git(_) => 1,
        }
    }
}

fn render_diagnostics(diagnostics: &[Diagnostic]) -> String {
    let mut out = diagnostics
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    if diagnostics.len() > 1 {
        out.push_str(&format!(
            "\n{} problems found; nothing was written",
            diagnostics.len()
        ));
    }
    out
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
