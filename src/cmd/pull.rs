//! `limner pull` (not written yet).

/// Arguments of `limner pull`.
#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("limner pull is not implemented yet")
}
