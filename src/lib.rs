//! limner: paints tabletop-RPG character portraits with Stable Diffusion running in-process on
//! candle, and keeps the characters they belong to.
//!
//! The library is split by responsibility: `engine` owns tensors and devices and knows nothing of
//! HTTP or characters; `characters` is the SQLite-backed store of profiles, campaigns and portrait
//! history; the binary in `main.rs` wires them to a command line.

pub mod api;
pub mod auth;
pub mod characters;
pub mod engine;
pub mod jobs;
pub mod portraits;
pub mod registry;
pub mod web;
