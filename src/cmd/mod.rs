//! One file per subcommand; each has clap `Args` and a `run` returning anyhow errors.

pub mod backup;
pub mod bench;
pub mod common;
pub mod generate;
pub mod locations;
pub mod migrate;
pub mod pregen;
pub mod profile;
pub mod pull;
pub mod serve;
pub mod token;
