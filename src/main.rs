//! The `limner` command line: parses arguments, sets up logging and runs one subcommand.

mod cmd;

use clap::{Parser, Subcommand};

/// Paints tabletop-RPG character portraits with Stable Diffusion, in-process, and keeps the
/// characters they belong to.
#[derive(Parser)]
#[command(name = "limner", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Download a model named in weights.toml into models/.
    Pull(cmd::pull::Args),
    /// Paint one image (txt2img, img2img or hires fix) to a file.
    Generate(cmd::generate::Args),
    /// Time a model: prints one JSON object with it/s, UNet ms/step, VAE ms, load s, peak RSS.
    Bench(cmd::bench::Args),
    /// Import the legacy JSON character layout into the store.
    Migrate(cmd::migrate::Args),
    /// Write a consistent copy of the database, also while the server runs.
    Backup(cmd::backup::Args),
    /// Import the pregenerated characters shipped with limner into the store.
    Pregen(cmd::pregen::Args),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Pull(args) => cmd::pull::run(args),
        Command::Generate(args) => cmd::generate::run(args),
        Command::Bench(args) => cmd::bench::run(args),
        Command::Migrate(args) => cmd::migrate::run(args),
        Command::Backup(args) => cmd::backup::run(args),
        Command::Pregen(args) => cmd::pregen::run(args),
    }
}
