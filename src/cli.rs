//! The command line: clap definitions, then `run`, which drives the pipeline, and `main`,
//! the single place that prints errors and picks the exit code.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use crate::blueprint::Blueprint;
use crate::error::{Error, Result};
use crate::format::Formatted;
use crate::plan::Plan;
use crate::spec::{self, Bus, Overrides, Spec};
use crate::update;
use crate::write::{self, GitOutcome, WriteOptions};

const EXAMPLES: &str = "\
Examples:
  archscaffold new shop --contexts orders,billing
  archscaffold new shop --spec shop.toml --bus sqs --out ../shop
  archscaffold new shop --example shop      (orders with states and commands)
  archscaffold new shop --example checkout  (a checkout saga over four services)
  archscaffold new shop --contexts orders,billing,shipping --dry-run
  archscaffold validate --spec shop.toml
  archscaffold add context shipping --subscribes billing.BillingCreated   (in the workspace)
  archscaffold add template team-ci --git file:///srv/git/extras.git --rev v1.4.0 --each context --define team=payments
  archscaffold update            (after editing archscaffold.toml, or with a newer archscaffold)
  archscaffold diff | archscaffold check
  archscaffold completions bash > /etc/bash_completion.d/archscaffold";

#[derive(Debug, Parser)]
#[command(
    name = "archscaffold",
    version,
    about = "Generate a multi-service Rust workspace from bounded contexts",
    after_help = EXAMPLES
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate a workspace: one gRPC service and one Postgres database per bounded context
    #[command(after_help = EXAMPLES)]
    New(NewArgs),
    /// Bring a workspace to its archscaffold.toml and this archscaffold, merging your edits
    Update(UpdateArgs),
    /// Add to a workspace's spec, then update it
    #[command(subcommand)]
    Add(AddCommand),
    /// Print, as a unified diff, what `update` would change
    Diff(WorkspaceArgs),
    /// Exit 0 when the workspace is in sync with its spec and this archscaffold, 1 if not
    Check(WorkspaceArgs),
    /// Check a spec file and report every problem with its location
    Validate {
        /// The spec file (TOML) to check
        #[arg(long, value_name = "FILE")]
        spec: PathBuf,
    },
    /// Print a shell completion script
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["contexts", "spec", "example"])))]
pub struct NewArgs {
    /// Name of the system; also the default output directory
    pub name: String,
    /// Bounded contexts for the default spec, in call-chain order, e.g. orders,billing
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "A,B,...",
        conflicts_with = "spec"
    )]
    pub contexts: Option<Vec<String>>,
    /// A spec file (TOML); see "The spec" in the README
    #[arg(long, value_name = "FILE")]
    pub spec: Option<PathBuf>,
    /// A bundled example spec (`examples/<NAME>.toml` in the repository)
    #[arg(long, value_enum, value_name = "NAME")]
    pub example: Option<Example>,
    /// Event bus of the generated system (overrides the spec's `bus`)
    #[arg(long, value_enum)]
    pub bus: Option<Bus>,
    /// Directory to create [default: ./<NAME>]
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Write into a non-empty directory, replacing generated files there
    #[arg(long)]
    pub force: bool,
    /// Do not create a git repository and first commit
    #[arg(long)]
    pub no_git: bool,
    /// Print the files that would be generated and write nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Use blueprints from this directory instead of the built-in ones
    #[arg(long, value_name = "DIR")]
    pub blueprints: Option<PathBuf>,
}

/// Where the workspace is and which blueprints render it.
#[derive(Debug, clap::Args)]
pub struct WorkspaceArgs {
    /// The workspace's root directory
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub dir: PathBuf,
    /// Use blueprints from this directory instead of the built-in ones
    #[arg(long, value_name = "DIR")]
    pub blueprints: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct UpdateArgs {
    #[command(flatten)]
    pub workspace: WorkspaceArgs,
    /// Update even though the git work tree has uncommitted changes
    #[arg(long)]
    pub allow_dirty: bool,
    /// Print what would change and write nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Accept removed or retyped fields: you wrote their migrations yourself
    #[arg(long)]
    pub fields_migrated_by_hand: bool,
    /// Replace the vendored platform (crates/platform) even though you edited it: your
    /// edits there are lost (carry them as a patch; see the workspace README)
    #[arg(long)]
    pub discard_platform_edits: bool,
}

#[derive(Debug, Subcommand)]
pub enum AddCommand {
    /// Add a bounded context (a service and its database) to the spec, then update
    Context(AddContextArgs),
    /// Add a team template (rendered with cargo-generate) to the spec, then update
    Template(AddTemplateArgs),
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("template_source").required(true).args(["path", "git"])))]
pub struct AddTemplateArgs {
    /// The template's name in messages and in the lock, e.g. team-ci
    pub name: String,
    /// A local folder (relative to the workspace root, or absolute)
    #[arg(long, value_name = "DIR")]
    pub path: Option<String>,
    /// A git repository, as a file:// URL
    #[arg(long, value_name = "URL", requires = "rev")]
    pub git: Option<String>,
    /// The tag or commit of --git to render
    #[arg(long, value_name = "REV", requires = "git")]
    pub rev: Option<String>,
    /// The template's folder inside the source
    #[arg(long, value_name = "DIR")]
    pub subfolder: Option<String>,
    /// Render it once per service, in services/<name>/ (otherwise once, at the root)
    #[arg(long, value_name = "context")]
    pub each: Option<String>,
    /// A value for one of the template's placeholders (repeatable)
    #[arg(long = "define", value_name = "KEY=VALUE", value_parser = key_value)]
    pub values: Vec<(String, String)>,
    /// Who owns what it renders: generator (merged by update) or user (written once)
    #[arg(long, value_name = "OWNER")]
    pub owner: Option<String>,
    #[command(flatten)]
    pub update: UpdateArgs,
}

fn key_value(given: &str) -> std::result::Result<(String, String), String> {
    given
        .split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.to_string()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("`{given}` is not KEY=VALUE"))
}

#[derive(Debug, clap::Args)]
pub struct AddContextArgs {
    /// Name of the new context, e.g. shipping
    pub name: String,
    /// Its aggregate [default: singular PascalCase of NAME]
    #[arg(long, value_name = "NAME")]
    pub aggregate: Option<String>,
    /// Events it consumes, as context.Event
    #[arg(long, value_delimiter = ',', value_name = "CTX.EVENT,...")]
    pub subscribes: Vec<String>,
    /// Contexts it calls synchronously
    #[arg(long, value_delimiter = ',', value_name = "CTX,...")]
    pub calls: Vec<String>,
    #[command(flatten)]
    pub update: UpdateArgs,
}

pub fn main() -> ExitCode {
    // The child that renders a team template (team_template): not a user command.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(crate::team_template::CHILD_COMMAND) {
        return crate::team_template::run_child(&args[1..]);
    }
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(e.exit_code())
        }
    }
}

pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::New(args) => new(args).map(|()| ExitCode::SUCCESS),
        Command::Update(args) => update(&args, None),
        Command::Add(AddCommand::Context(args)) => add_context(&args),
        Command::Add(AddCommand::Template(args)) => add_template(&args),
        Command::Diff(args) => {
            let update = prepare(&args, None, update::Options::default())?;
            print!("{}", update::unified_diff(&update)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Check(args) => {
            let update = prepare(&args, None, update::Options::default())?;
            let markers = update.files_with_conflict_markers();
            if let Some(path) = markers.first() {
                println!(
                    "out of sync: conflict markers remain in {path}{}; resolve them, then commit",
                    if markers.len() > 1 {
                        format!(" and {} other file(s)", markers.len() - 1)
                    } else {
                        String::new()
                    }
                );
                return Ok(ExitCode::from(1));
            }
            match update.out_of_sync() {
                Some(reason) => {
                    println!("out of sync: {reason}");
                    if !update.platform_edits.is_empty() {
                        println!("edited in the vendored platform:");
                        for (path, edit) in &update.platform_edits {
                            println!("  {path} ({})", edit.label());
                        }
                    }
                    Ok(ExitCode::from(1))
                }
                None => {
                    println!(
                        "in sync: archscaffold {} generates this workspace from archscaffold.toml",
                        crate::VERSION
                    );
                    Ok(ExitCode::SUCCESS)
                }
            }
        }
        Command::Validate { spec: path } => {
            let spec = spec::load(&path, &Overrides::default())?;
            println!(
                "{}: valid; system `{}`, bus {}, {} contexts: {}",
                path.display(),
                spec.system.raw,
                spec.bus.as_str(),
                spec.contexts.len(),
                context_list(&spec)
            );
            for saga in &spec.sagas {
                let steps: Vec<&str> = saga.steps.iter().map(|s| s.label.as_str()).collect();
                println!(
                    "  saga `{}` in {} on {}: {}",
                    saga.name.raw,
                    saga.owner.raw,
                    saga.start.raw,
                    steps.join(", then ")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Completions { shell } => {
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "archscaffold", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn load_blueprint(dir: Option<&Path>) -> Result<Blueprint> {
    match dir {
        Some(dir) => Blueprint::from_dir(dir),
        None => Blueprint::embedded(),
    }
}

fn prepare(
    args: &WorkspaceArgs,
    spec_text: Option<String>,
    options: update::Options,
) -> Result<update::Update> {
    let blueprint = load_blueprint(args.blueprints.as_deref())?;
    update::prepare(&args.dir, spec_text, &blueprint, options)
}

fn update(args: &UpdateArgs, spec_text: Option<String>) -> Result<ExitCode> {
    if !args.allow_dirty && !args.dry_run {
        update::ensure_clean(&args.workspace.dir)?;
    }
    let options = update::Options {
        fields_migrated_by_hand: args.fields_migrated_by_hand,
        discard_platform_edits: args.discard_platform_edits,
    };
    let update = prepare(&args.workspace, spec_text, options)?;
    if !args.dry_run {
        update::apply(&update)?;
    }
    print_update(&update, args.dry_run);
    Ok(if update.conflicts().next().is_some() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn add_context(args: &AddContextArgs) -> Result<ExitCode> {
    let context = spec::edit::NewContext {
        name: &args.name,
        aggregate: args.aggregate.as_deref(),
        subscribes: &args.subscribes,
        calls: &args.calls,
    };
    let what = format!("`{}`", args.name);
    add(
        &args.update,
        &format!("contexts.{}", args.name),
        &what,
        |text| spec::edit::add_context(text, &context),
    )
}

fn add_template(args: &AddTemplateArgs) -> Result<ExitCode> {
    let template = spec::edit::NewTemplate {
        name: &args.name,
        path: args.path.as_deref(),
        git: args.git.as_deref(),
        rev: args.rev.as_deref(),
        subfolder: args.subfolder.as_deref(),
        each: args.each.as_deref(),
        owner: args.owner.as_deref(),
        values: &args.values,
    };
    let what = format!("template `{}`", args.name);
    add(&args.update, &what, &what, |text| {
        spec::edit::add_template(text, &template)
    })
}

/// `add ...`: the workspace's spec edited by `edit` (which refuses a name taken), checked
/// as it would be written, then an update to it. `field` and `what` name the addition in
/// messages.
fn add(
    args: &UpdateArgs,
    field: &str,
    what: &str,
    edit: impl FnOnce(&str) -> std::result::Result<String, String>,
) -> Result<ExitCode> {
    let dir = &args.workspace.dir;
    let spec_path = dir.join(crate::layout::SPEC_FILE);
    let text = std::fs::read_to_string(&spec_path).map_err(|_| Error::NotAWorkspace {
        dir: dir.clone(),
        missing: crate::layout::SPEC_FILE.to_string(),
    })?;
    let edited = edit(&text).map_err(|message| {
        Error::Invalid(vec![crate::error::Diagnostic {
            field: field.to_string(),
            origin: crate::error::Origin::Flag("<NAME>"),
            message,
            help: "choose a name that archscaffold.toml does not have yet".to_string(),
        }])
    })?;
    // Checked before anything else, with the locations of the text as it would be written.
    let label = format!("{} (with {what} added)", update::spec_label(dir));
    spec::parse(&edited, &label, &spec::Overrides::default())?;
    update(args, Some(edited))
}

fn print_update(update: &update::Update, dry_run: bool) {
    let mut out = std::io::stdout().lock();
    let verb = if dry_run { "would update" } else { "updated" };
    let _ = writeln!(
        out,
        "{verb} `{}` from archscaffold {} to {}:",
        update.spec.system.raw,
        update.previous_version,
        crate::VERSION
    );
    if update.spec_text.is_some() {
        let _ = writeln!(out, "  {:<8}  {}", "edit", crate::layout::SPEC_FILE);
    }
    let width = update
        .changes
        .iter()
        .map(|c| c.path.len())
        .max()
        .unwrap_or(0);
    // The vendored platform is one line: it is replaced whole, never merged.
    if let update::PlatformStep::Replaced { from, to } = &update.platform {
        let files = update
            .changes
            .iter()
            .filter(|c| crate::layout::in_vendored_platform(&c.path).is_some())
            .count();
        let from = from
            .as_deref()
            .map_or(String::new(), |v| format!("{v} -> "));
        let _ = writeln!(
            out,
            "  {:<8}  {:<width$}  platform {from}{to}, {files} file(s) replaced whole",
            "replace",
            crate::layout::VENDORED_PLATFORM
        );
    }
    for change in update
        .changes
        .iter()
        .filter(|c| crate::layout::in_vendored_platform(&c.path).is_none())
    {
        let line = format!(
            "  {:<8}  {:<width$}  {}",
            change.action.label(),
            change.path,
            change.action.note()
        );
        let _ = writeln!(out, "{}", line.trim_end());
    }
    if update.changes.is_empty() {
        let _ = writeln!(out, "  nothing to change");
    }
    for warning in &update.warnings {
        eprintln!("warning: {warning}");
    }
    if update.platform == update::PlatformStep::EditsKept {
        eprintln!(
            "warning: {} file(s) of the vendored platform are edited and were left as they are (`archscaffold check` names them)",
            update.platform_edits.len()
        );
    }
    let conflicts = update.conflicts().count();
    if conflicts > 0 {
        let _ = writeln!(
            out,
            "\n{conflicts} file(s) with conflicts: edit the parts between <<<<<<< and >>>>>>>, then run `archscaffold check`."
        );
    } else if !dry_run && !update.changes.is_empty() {
        let _ = writeln!(
            out,
            "\nReview with `git diff`, build, and commit; nothing was committed."
        );
    }
}

/// The example specs built into the binary.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Example {
    /// Orders with a lifecycle (pending, confirmed, cancelled) and commands; invoices
    /// opened by orders' events and paid.
    Shop,
    /// A checkout saga: a payment, an inventory reservation and a shipment, compensated
    /// in reverse when one is refused.
    Checkout,
}

impl Example {
    fn spec(self) -> (&'static str, &'static str) {
        match self {
            Example::Shop => ("examples/shop.toml", include_str!("../examples/shop.toml")),
            Example::Checkout => (
                "examples/checkout.toml",
                include_str!("../examples/checkout.toml"),
            ),
        }
    }
}

fn new(args: NewArgs) -> Result<()> {
    let overrides = Overrides {
        name: Some(&args.name),
        bus: args.bus,
    };
    let spec = match (&args.spec, &args.contexts, args.example) {
        (Some(path), _, _) => spec::load(path, &overrides)?,
        (None, Some(contexts), _) => {
            spec::from_contexts(&args.name, contexts, args.bus.unwrap_or(Bus::Kafka))?
        }
        (None, None, Some(example)) => {
            let (path, text) = example.spec();
            spec::parse(text, path, &overrides)?
        }
        (None, None, None) => unreachable!("clap requires --contexts, --spec or --example"),
    };
    let blueprint = load_blueprint(args.blueprints.as_deref())?;
    let target = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(&spec.system.raw));
    let team = crate::team_template::render_all(&spec, &target)?;
    let plan = Plan::build(&spec, &blueprint, &team)?;
    if plan.formatted == Formatted::RustfmtMissing {
        eprintln!(
            "warning: rustfmt not found (install it with `rustup component add rustfmt`); the Rust files are unformatted"
        );
    }
    write::check_target(&target, args.force)?;

    if args.dry_run {
        print_tree(&target, &plan);
        return Ok(());
    }

    let progress = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(plan.files.len() as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} writing {pos}/{len} {wide_msg}")
                .expect("static template"),
        );
        bar
    });
    let git = write::write(
        &plan,
        &target,
        WriteOptions {
            force: args.force,
            git: !args.no_git,
        },
        |path| {
            if let Some(bar) = &progress {
                bar.set_message(path.to_string());
                bar.inc(1);
            }
        },
    )?;
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    print_summary(&spec, &plan, &target, git);
    Ok(())
}

fn context_list(spec: &Spec) -> String {
    spec.contexts
        .iter()
        .map(|c| c.name.raw.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn print_tree(target: &Path, plan: &Plan) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{}/  (dry run: {} files, nothing written)",
        target.display(),
        plan.files.len()
    );
    let width = plan.files.keys().map(|p| p.len()).max().unwrap_or(0);
    for (path, file) in &plan.files {
        let _ = writeln!(out, "  {path:<width$}  {}", file.owner.as_str());
    }
}

fn print_summary(spec: &Spec, plan: &Plan, target: &Path, git: GitOutcome) {
    let git = match git {
        GitOutcome::Committed => "; git repository with a first commit",
        GitOutcome::Disabled => "",
        GitOutcome::ExistingRepository => "; existing git repository left for you to commit",
    };
    println!(
        "Generated `{}`: {} services ({}), {} files in {}{git}.",
        spec.system.raw,
        spec.contexts.len(),
        context_list(spec),
        plan.files.len(),
        target.display()
    );
    let dir = target.display();
    println!("\nNext:");
    println!(
        "  cd {dir} && deploy/local/up.sh      builds and runs it; starts PostgreSQL, the broker and Redis where none is given"
    );
    println!("  cd {dir} && deploy/local/down.sh    stops what up.sh started");
    println!(
        "  cd {dir} && DATABASE_URL=postgres://postgres:postgres@127.0.0.1:5432/postgres cargo test --workspace"
    );
    println!(
        "\n(the tests need a PostgreSQL server that lets that user create databases; see {dir}/README.md)"
    );
}
