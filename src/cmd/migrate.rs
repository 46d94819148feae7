//! `limner migrate`: the legacy import (`characters::legacy_import`, not the SQL schema
//! migrations, which `Store::open` applies by itself). Imports the legacy JSON character layout
//! into the store, copies its portrait
//! files into the media store (`<data-dir>/media`) and prints one JSON report on stdout.
//! Unreadable input writes nothing and exits non-zero (the report lists why).

use limner::characters::legacy_import::{apply_legacy, plan_legacy, LegacyImportError};
use limner::characters::{Store, DB_FILE_NAME};
use limner::portraits::{LocalImageStore, MediaPortraitFiles};
use std::path::PathBuf;
use std::sync::Arc;

/// Arguments of `limner migrate`.
#[derive(clap::Args)]
pub struct Args {
    /// The legacy folder, holding `character_profiles/` and/or `campaigns/`.
    #[arg(long, value_name = "DIR")]
    from: PathBuf,
    /// Report what would change without writing anything.
    #[arg(long)]
    dry_run: bool,
    /// List unreadable or malformed files as skipped instead of refusing to migrate.
    #[arg(long)]
    skip_malformed: bool,
    /// Data directory: the database is `<data-dir>/limner.db`, portraits go to `<data-dir>/media`.
    #[arg(long, env = "LIMNER_DATA_DIR", default_value_os_t = super::locations::default_data_dir())]
    data_dir: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    // Read and check everything before the database is even opened.
    let plan = match plan_legacy(&args.from, args.skip_malformed) {
        Ok(plan) => plan,
        Err(LegacyImportError::Input(report)) => {
            println!("{}", serde_json::to_string_pretty(&report)?);
            anyhow::bail!(
                "{} unreadable or malformed file(s) in {}; nothing was written",
                report.errors.len(),
                args.from.display()
            );
        }
        Err(e) => return Err(e.into()),
    };
    let db = args.data_dir.join(DB_FILE_NAME);
    // A dry run against a database that does not exist yet must not create one.
    let store = if args.dry_run && !db.exists() {
        Store::open_in_memory()?
    } else {
        Store::open(&db)?
    };
    let files =
        MediaPortraitFiles::new(Arc::new(LocalImageStore::new(args.data_dir.join("media"))));
    let report = apply_legacy(&store, &files, plan, args.dry_run)?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    for change in &report.ids_changed {
        eprintln!(
            "note: {} {:?} is now {:?}: {}",
            change.kind, change.legacy_id, change.id, change.reason
        );
    }
    for skipped in &report.files_skipped {
        eprintln!("skipped {}: {}", skipped.path, skipped.reason);
    }
    Ok(())
}
