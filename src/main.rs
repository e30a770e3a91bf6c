use std::process::ExitCode;

fn main() -> ExitCode {
    archscaffold::cli::main()
}
