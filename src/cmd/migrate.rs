//! `limner migrate` (not written yet).

/// Arguments of `limner migrate`.
#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("limner migrate is not implemented yet")
}
