//! The command line: clap definitions, then `run`, which drives the pipeline, and `main`,
//! the single place that prints errors and picks the exit code.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use crate::blueprint::Blueprint;
use crate::error::Result;
use crate::format::Formatted;
use crate::plan::Plan;
use crate::spec::{self, Bus, Overrides, Spec};
use crate::write::{self, GitOutcome, WriteOptions};

const EXAMPLES: &str = "\
Examples:
  archscaffold new shop --contexts orders,billing
  archscaffold new shop --spec shop.toml --bus sqs --out ../shop
  archscaffold new shop --contexts orders,billing,shipping --dry-run
  archscaffold validate --spec shop.toml
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
#[command(group(clap::ArgGroup::new("source").required(true).args(["contexts", "spec"])))]
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

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(e.exit_code())
        }
    }
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::New(args) => new(args),
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
            Ok(())
        }
        Command::Completions { shell } => {
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "archscaffold", &mut std::io::stdout());
            Ok(())
        }
    }
}

fn new(args: NewArgs) -> Result<()> {
    let spec = match (&args.spec, &args.contexts) {
        (Some(path), _) => spec::load(
            path,
            &Overrides {
                name: Some(&args.name),
                bus: args.bus,
            },
        )?,
        (None, Some(contexts)) => {
            spec::from_contexts(&args.name, contexts, args.bus.unwrap_or(Bus::Kafka))?
        }
        (None, None) => unreachable!("clap requires --contexts or --spec"),
    };
    let blueprint = match &args.blueprints {
        Some(dir) => Blueprint::from_dir(dir)?,
        None => Blueprint::embedded()?,
    };
    let plan = Plan::build(&spec, &blueprint)?;
    if plan.formatted == Formatted::RustfmtMissing {
        eprintln!(
            "warning: rustfmt not found (install it with `rustup component add rustfmt`); the Rust files are unformatted"
        );
    }
    let target = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(&spec.system.raw));
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
    println!("  cd {dir} && cargo build --workspace");
    println!(
        "  cd {dir} && DATABASE_URL=postgres://postgres:postgres@127.0.0.1:5432/postgres cargo test --workspace"
    );
    println!(
        "\n(the tests need a PostgreSQL server that lets that user create databases; see {dir}/README.md)"
    );
}
