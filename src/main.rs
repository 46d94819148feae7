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
    /// Run the portrait server: HTTP API, job queue and engine.
    Serve(cmd::serve::Args),
    /// Create, list or revoke API tokens.
    Token(cmd::token::Args),
}

/// Logs go to stderr, filtered by RUST_LOG (default info). `bench --profile` also records
/// candle's TRACE spans into a [`cmd::profile::Profile`].
fn init_tracing(profile: Option<cmd::profile::Profile>) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let env = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour codes only for a terminal; a log file or a pipe gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_filter(env);
    let spans = profile.map(|p| {
        p.with_filter(
            tracing_subscriber::filter::Targets::new()
                .with_target("candle_transformers", tracing::Level::TRACE)
                .with_target("limner", tracing::Level::TRACE),
        )
    });
    tracing_subscriber::registry().with(fmt).with(spans).init();
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let profile = match &cli.command {
        Command::Bench(args) if args.profile => Some(cmd::profile::Profile::default()),
        _ => None,
    };
    init_tracing(profile.clone());
    match cli.command {
        Command::Pull(args) => cmd::pull::run(args),
        Command::Generate(args) => cmd::generate::run(args),
        Command::Bench(args) => cmd::bench::run(args, profile),
        Command::Migrate(args) => cmd::migrate::run(args),
        Command::Backup(args) => cmd::backup::run(args),
        Command::Pregen(args) => cmd::pregen::run(args),
        Command::Serve(args) => cmd::serve::run(args),
        Command::Token(args) => cmd::token::run(args),
    }
}
