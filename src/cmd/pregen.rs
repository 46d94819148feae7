//! `limner pregen` (not written yet).

/// Arguments of `limner pregen`.
#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("limner pregen is not implemented yet")
}
