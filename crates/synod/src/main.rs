//! The `synod` command line.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

mod sim_cmd;

#[derive(Parser)]
#[command(name = "synod", version, about = "A consensus toolkit: protocols, their proof in a deterministic simulator, and (soon) a replicated service")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run an algorithm many times in the deterministic simulator under faults and
    /// check its properties on every run.
    Sim(sim_cmd::SimArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Sim(args) => sim_cmd::run(args),
    };
    match result {
        Ok(code) => code,
        // A reader that stops early (`synod sim --trace | head`) is not an error.
        Err(e) if e.contains("Broken pipe") => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("synod: {e}");
            ExitCode::from(2)
        }
    }
}
