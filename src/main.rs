//! The `limner` command line: parses arguments, sets up logging and runs one subcommand.

mod cmd;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

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

/// What help shows beyond the arguments: `pull`'s list of the built-in registry's models.
fn with_help_extras(cmd: clap::Command) -> clap::Command {
    cmd.mut_subcommand("pull", |pull| pull.after_help(cmd::pull::built_in_models()))
}

/// The command line. Only a help request builds the help extras: they parse the built-in
/// weights.toml, and every other run reads exactly one registry, the one it uses.
fn parse() -> Cli {
    match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelp => {
            // Parses the same arguments again and prints the fuller help (then exits).
            let matches = with_help_extras(Cli::command()).get_matches();
            Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
        }
        Err(e) => e.exit(),
    }
}

fn main() -> anyhow::Result<()> {
    let cli = parse();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_help_lists_the_built_in_models() {
        let plain = Cli::command();
        let pull = plain.find_subcommand("pull").expect("pull");
        assert!(
            pull.get_after_help().is_none(),
            "building the command line parses no registry"
        );
        let mut helped = with_help_extras(Cli::command());
        let pull = helped.find_subcommand_mut("pull").expect("pull");
        let help = pull.render_long_help().to_string();
        for name in ["dreamshaper-8", "sd-turbo", "tiny-fixture"] {
            assert!(help.contains(name), "{name} missing from: {help}");
        }
    }
}
