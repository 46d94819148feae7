//! The LoRA state one loaded model carries: which set is merged in, the base tensors it
//! replaced, the merge cache and the parsed files. Kept apart from the merging code so the model
//! can own it without the model and the merging code naming each other.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use candle_core::Tensor;

use super::file::{LoraFile, Part};
use super::names::ModelNames;

/// What identifies a file's contents cheaply: size and modification time.
pub(super) type Stamp = (u64, u128);

/// A set of LoRAs as applied: files, their stamps, weights (bits, so it is `Eq`).
pub(super) type SetKey = Vec<(PathBuf, Stamp, u64)>;

pub(super) type Merged = HashMap<(Part, String), Tensor>;

/// Parsed files kept at most (LoRA files are small next to a model).
pub(super) const MAX_PARSED: usize = 8;

/// The LoRA state of one loaded model.
#[derive(Default)]
pub(crate) struct LoraState {
    /// The set whose merged weights are in the model now (empty = the base model).
    pub(super) applied: SetKey,
    /// The base tensors of every swapped weight, put back when another set (or none) is applied.
    pub(super) originals: Merged,
    /// The merged weights of the last set built.
    pub(super) cache: Option<(SetKey, Arc<Merged>)>,
    pub(super) names: Option<Arc<ModelNames>>,
    pub(super) parsed: HashMap<PathBuf, (Stamp, Arc<LoraFile>)>,
    pub(super) hashes: HashMap<PathBuf, (Stamp, String)>,
}

impl LoraState {
    /// Bytes held besides the base weights: the cached merged tensors.
    pub(crate) fn extra_bytes(&self) -> u64 {
        self.cache.as_ref().map_or(0, |(_, m)| {
            m.values()
                .map(|t| (t.elem_count() * t.dtype().size_in_bytes()) as u64)
                .sum()
        })
    }
}
