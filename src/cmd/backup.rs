//! `limner backup FILE`: a consistent copy of the database (SQLite online backup), safe while
//! the server is running; the copy is checked with `PRAGMA integrity_check`.

use limner::characters::{CharacterStore, Store, DB_FILE_NAME};
use std::path::PathBuf;

/// Arguments of `limner backup`.
#[derive(clap::Args)]
pub struct Args {
    /// Where to write the copy (replaced atomically if it exists).
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// Data directory; the database is `<data-dir>/limner.db`.
    #[arg(long, env = "LIMNER_DATA_DIR", default_value_os_t = super::locations::default_data_dir())]
    data_dir: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let db = args.data_dir.join(DB_FILE_NAME);
    if !db.is_file() {
        anyhow::bail!("no database at {}", db.display());
    }
    let store = Store::open_existing(&db)?;
    store.backup_to(&args.file)?;
    let check = Store::open_existing(&args.file)?.integrity_check()?;
    if check != "ok" {
        anyhow::bail!(
            "backup {} failed integrity_check: {check}",
            args.file.display()
        );
    }
    let bytes = std::fs::metadata(&args.file)?.len();
    println!(
        "{}",
        serde_json::json!({"source": db, "backup": args.file, "bytes": bytes, "integrity_check": check})
    );
    Ok(())
}
