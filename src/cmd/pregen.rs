//! `limner pregen`: imports the pregenerated characters shipped with limner into the store
//! (idempotent), or lists them.

use limner::characters::{import_pregenerated, pregenerated, Store, DB_FILE_NAME};
use std::path::PathBuf;

/// Arguments of `limner pregen`.
#[derive(clap::Args)]
pub struct Args {
    /// Owner id given to the characters created now.
    #[arg(long)]
    owner: Option<String>,
    /// Print the shipped characters as JSON instead of importing them.
    #[arg(long)]
    list: bool,
    /// Data directory; the database is `<data-dir>/limner.db`.
    #[arg(long, env = "LIMNER_DATA_DIR", default_value_os_t = super::locations::default_data_dir())]
    data_dir: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.list {
        println!("{}", serde_json::to_string_pretty(&pregenerated()?)?);
        return Ok(());
    }
    let store = Store::open(&args.data_dir.join(DB_FILE_NAME))?;
    let report = import_pregenerated(&store, args.owner.as_deref())?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
