//! `limner backup` (not written yet).

/// Arguments of `limner backup`.
#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("limner backup is not implemented yet")
}
