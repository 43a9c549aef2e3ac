//! The `ironlb` command.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Bare-metal LoadBalancer provider for Kubernetes.
#[derive(Parser)]
#[command(name = "ironlb", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print every CustomResourceDefinition as multi-document YAML
    /// (`ironlb crds | kubectl apply -f -`).
    Crds,
    /// Print ironlb's version.
    Version,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("ironlb: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Crds => print!("{}", ironlb::api::crds_yaml()?),
        Command::Version => println!("ironlb {}", env!("CARGO_PKG_VERSION")),
    }
    Ok(())
}
