//! `limner token`: create, list and revoke API tokens (stored hashed in the database).

use std::path::PathBuf;

use clap::Subcommand;
use limner::auth::{Role, TokenStore};
use limner::characters::DB_FILE_NAME;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: TokenCommand,
    /// Where the database lives.
    #[arg(long, env = "LIMNER_DATA_DIR", default_value_os_t = super::locations::default_data_dir(), global = true)]
    pub data_dir: PathBuf,
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Create a token; it is printed once and only its hash is stored.
    Create {
        /// The user the token belongs to (owner of the characters it creates).
        #[arg(long)]
        name: String,
        /// admin or player.
        #[arg(long, default_value = "player")]
        role: String,
    },
    /// List tokens (never their secrets).
    List,
    /// Revoke a token by id.
    Revoke { id: i64 },
}

pub fn run(args: Args) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir)?;
    // Open through the store first so the schema (and its migrations) exist.
    let store = limner::characters::SqliteStore::open_in_data_dir(&args.data_dir)?;
    drop(store);
    let tokens = TokenStore::open(&args.data_dir.join(DB_FILE_NAME)).map_err(anyhow::Error::msg)?;
    match args.command {
        TokenCommand::Create { name, role } => {
            let role = Role::parse(&role).map_err(anyhow::Error::msg)?;
            let (secret, info) = tokens.create(&name, role).map_err(anyhow::Error::msg)?;
            eprintln!(
                "token {} for {} ({}); it is shown only now:",
                info.id,
                info.user,
                info.role.as_str()
            );
            println!("{secret}");
        }
        TokenCommand::List => {
            println!(
                "{}",
                serde_json::to_string_pretty(&tokens.list().map_err(anyhow::Error::msg)?)?
            );
        }
        TokenCommand::Revoke { id } => {
            if !tokens.revoke(id).map_err(anyhow::Error::msg)? {
                anyhow::bail!("no token with id {id}");
            }
            eprintln!("token {id} revoked");
        }
    }
    Ok(())
}
