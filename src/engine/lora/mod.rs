//! LoRA in the engine: files of `MODELS_DIR/loras/` named by a request (`<lora:name:w>` tags,
//! the `loras` field) are merged into the loaded model's weights before it paints:
//! `W' = W + sum_i weight_i * scale_i * up_i @ down_i`, one weight for the UNet and the text
//! encoder(s), as diffusers' `set_adapters` and A1111's `<lora:name:w>` apply it.
//!
//! Why merged, not run as side branches: a merged layer costs nothing per step, and the model
//! only touches the tensors a LoRA targets. The original tensors are kept (cheap `Arc` clones)
//! while a set is applied and put back afterwards, so the base model returns bit for bit and
//! nothing drifts across requests (nothing is ever subtracted). The merged tensors of the last
//! set stay cached, so repeating a set costs nothing and a switch is one merge.

mod file;
mod names;
pub(crate) mod state;
pub(crate) mod tags;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use candle_core::{DType, Tensor};

use crate::engine::error::{EngineError, Result};
use crate::engine::loading::model::StableDiffusion;
use crate::engine::models::weights::{VisitWeights, WeightLayout};
use crate::engine::networks::{find_network, scan_network_dir, NetworkFile};
pub(crate) use file::{LoraFile, Part};
use names::{ModelNames, Target};
use state::{Merged, SetKey, Stamp, MAX_PARSED};

/// One LoRA a validated request applies, before its file is looked up.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraUse {
    /// The name as the request wrote it (A1111 records this one in `Lora hashes`).
    pub name: String,
    pub weight: f64,
    /// The request field that named it: `prompt` (a tag) or `loras`.
    pub field: &'static str,
}

/// A [`LoraUse`] with its file.
#[derive(Debug, Clone)]
pub(crate) struct ResolvedLora {
    pub name: String,
    pub path: PathBuf,
    pub weight: f64,
    pub field: &'static str,
}

/// Looks every LoRA up in `dir` (None = no LoRA folder): an unknown name is an input error
/// of the field that named it, listing a few known names.
pub(crate) fn resolve(uses: &[LoraUse], dir: Option<&Path>) -> Result<Vec<ResolvedLora>> {
    if uses.is_empty() {
        return Ok(Vec::new());
    }
    let files: Vec<NetworkFile> = dir.map(scan_network_dir).unwrap_or_default();
    uses.iter()
        .map(|u| match find_network(&files, &u.name) {
            Some(f) => Ok(ResolvedLora {
                name: u.name.clone(),
                path: f.path.clone(),
                weight: u.weight,
                field: u.field,
            }),
            None => {
                let known: Vec<&str> = files.iter().take(8).map(|f| f.name.as_str()).collect();
                let known = if known.is_empty() {
                    "no LoRA files are installed (put .safetensors files in the models \
                     folder's loras/)"
                        .to_string()
                } else {
                    let more = if files.len() > known.len() {
                        ", ..."
                    } else {
                        ""
                    };
                    format!("known LoRAs: {}{more}", known.join(", "))
                };
                Err(EngineError::invalid(
                    u.field,
                    format!("unknown LoRA {:?}; {known}", u.name),
                ))
            }
        })
        .collect()
}

fn stamp(path: &Path) -> std::io::Result<Stamp> {
    let meta = std::fs::metadata(path)?;
    let mtime = meta
        .modified()?
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    Ok((meta.len(), mtime))
}

type PartFn<'a> =
    dyn FnMut(Part, &str, WeightLayout, &Tensor) -> candle_core::Result<Option<Tensor>> + 'a;

/// Visits the UNet and the text encoder(s) of `model`.
fn visit_parts(model: &mut StableDiffusion, f: &mut PartFn) -> candle_core::Result<()> {
    model
        .unet
        .visit_weights("", &mut |n, l, t| f(Part::Unet, n, l, t))?;
    model
        .text_encoder
        .visit_weights("", &mut |n, l, t| f(Part::TextEncoder, n, l, t))?;
    if let Some(te2) = &mut model.text_encoder_2 {
        te2.encoder
            .visit_weights("", &mut |n, l, t| f(Part::TextEncoder2, n, l, t))?;
    }
    Ok(())
}

fn model_error(e: candle_core::Error) -> EngineError {
    EngineError::Model(format!("applying LoRA weights: {e}"))
}

/// `sum_i s_i * up_i @ down_i` laid out as the target weight is stored, in f32 on `device`.
/// The pairs are stacked along the rank (`[up_1 s_1 | up_2 s_2] @ [down_1; down_2]`), so any
/// number of LoRAs on one weight is one matmul, and the scales touch only the small factor:
/// the merge makes one pass over the full-size weight.
fn delta(
    mods: &[(file::LoraModule, f64)],
    t: &Target,
    device: &candle_core::Device,
) -> candle_core::Result<Tensor> {
    let (out, fan_in) = t.out_and_fan_in();
    let mut downs = Vec::with_capacity(mods.len());
    let mut ups = Vec::with_capacity(mods.len());
    for (m, s) in mods {
        let r = m.down.dim(0)?;
        downs.push(m.down.reshape((r, fan_in))?);
        ups.push((m.up.reshape((out, r))? * *s)?);
    }
    let down = Tensor::cat(&downs, 0)?.to_device(device)?;
    let up = Tensor::cat(&ups, 1)?.to_device(device)?;
    match t.layout {
        WeightLayout::LinearT => down.t()?.matmul(&up.t()?),
        WeightLayout::Linear => up.matmul(&down),
        WeightLayout::Conv => up.matmul(&down)?.reshape(t.dims.as_slice()),
    }
}

/// Checks that a module's pair fits the model weight it names.
fn fits(m: &file::LoraModule, t: &Target) -> bool {
    let (out, fan_in) = t.out_and_fan_in();
    let r = m.down.dims()[0];
    let down_in = m.down.dims()[1];
    let expected_in = match t.layout {
        WeightLayout::Conv => t.dims[1],
        _ => fan_in,
    };
    m.up.dims()[0] == out
        && m.up.dims()[1] == r
        && m.up.elem_count() == out * r
        && down_in == expected_in
        && m.down.elem_count() == r * fan_in
}

/// A1111's short LoRA hash: the kohya "addnet" hash (SHA-256 of a safetensors file after its
/// header, so editing the metadata keeps it; civitai's AutoV3), or the `sshs_model_hash` the
/// training script stored, first 12 hex digits.
fn addnet_hash(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len)?;
    let header_len = u64::from_le_bytes(len);
    let mut header = vec![0u8; header_len.min(100 << 20) as usize];
    file.read_exact(&mut header)?;
    let stored = serde_json::from_slice::<serde_json::Value>(&header)
        .ok()
        .and_then(|h| {
            h.get("__metadata__")?
                .get("sshs_model_hash")?
                .as_str()
                .map(str::to_string)
        })
        .filter(|h| h.len() >= 12 && h.chars().all(|c| c.is_ascii_hexdigit()));
    if let Some(h) = stored {
        return Ok(h.to_ascii_lowercase());
    }
    file.seek(SeekFrom::Start(8 + header_len))?;
    crate::engine::loading::model_hash::sha256_rest(&mut file)
}

impl StableDiffusion {
    /// Makes `set` the LoRAs merged into this model (empty = the base model). Every module is
    /// checked before any weight changes; when a LoRA does not fit, the model is left as the
    /// base model.
    pub(crate) fn apply_loras(&mut self, set: &[ResolvedLora]) -> Result<()> {
        let key = set
            .iter()
            .map(|l| {
                let s = stamp(&l.path).map_err(|e| {
                    EngineError::invalid(l.field, format!("LoRA {:?}: {e}", l.name))
                })?;
                Ok((l.path.clone(), s, l.weight.to_bits()))
            })
            .collect::<Result<SetKey>>()?;
        if self.lora.applied == key {
            return Ok(());
        }
        self.restore_base()?;
        if key.is_empty() {
            return Ok(());
        }
        let merged = match &self.lora.cache {
            Some((k, m)) if *k == key => m.clone(),
            _ => {
                // Drop the old cache first: only one set's merged copies are held at a time.
                self.lora.cache = None;
                let merged = Arc::new(self.merge(set, &key)?);
                self.lora.cache = Some((key.clone(), merged.clone()));
                merged
            }
        };
        let mut originals = Merged::new();
        let swapped = visit_parts(self, &mut |part, name, _, t| {
            Ok(match merged.get(&(part, name.to_string())) {
                Some(m) => {
                    originals.insert((part, name.to_string()), t.clone());
                    Some(m.clone())
                }
                None => None,
            })
        });
        self.lora.originals = originals;
        match swapped {
            Ok(()) => {
                self.lora.applied = key;
                Ok(())
            }
            Err(e) => {
                self.restore_base()?;
                Err(model_error(e))
            }
        }
    }

    /// Puts every swapped weight's original tensor back.
    fn restore_base(&mut self) -> Result<()> {
        let originals = std::mem::take(&mut self.lora.originals);
        self.lora.applied.clear();
        if originals.is_empty() {
            return Ok(());
        }
        visit_parts(self, &mut |part, name, _, _| {
            Ok(originals.get(&(part, name.to_string())).cloned())
        })
        .map_err(model_error)
    }

    /// The model's targetable weights by name (built once per model).
    fn lora_names(&mut self) -> Result<Arc<ModelNames>> {
        if let Some(n) = &self.lora.names {
            return Ok(n.clone());
        }
        let mut names = ModelNames::new(self.unet_config.layers_per_block);
        visit_parts(self, &mut |part, name, layout, t| {
            let dims = t.dims().to_vec();
            names.insert(part, name, Target { layout, dims });
            Ok(None)
        })
        .map_err(model_error)?;
        let names = Arc::new(names);
        self.lora.names = Some(names.clone());
        Ok(names)
    }

    fn lora_file(&mut self, lora: &ResolvedLora, stamp: Stamp) -> Result<Arc<LoraFile>> {
        if let Some((s, f)) = self.lora.parsed.get(&lora.path) {
            if *s == stamp {
                return Ok(f.clone());
            }
        }
        let parsed = LoraFile::read(&lora.path)
            .map_err(|e| EngineError::invalid(lora.field, format!("LoRA {:?}: {e}", lora.name)))?;
        let parsed = Arc::new(parsed);
        if self.lora.parsed.len() >= MAX_PARSED {
            self.lora.parsed.clear();
        }
        self.lora
            .parsed
            .insert(lora.path.clone(), (stamp, parsed.clone()));
        Ok(parsed)
    }

    /// Builds the merged weights of `set`; checks every module first.
    fn merge(&mut self, set: &[ResolvedLora], key: &SetKey) -> Result<Merged> {
        let names = self.lora_names()?;
        let mut plan: HashMap<(Part, String), Vec<(file::LoraModule, f64)>> = HashMap::new();
        for (lora, (_, stamp, _)) in set.iter().zip(key) {
            let parsed = self.lora_file(lora, *stamp)?;
            let mut unmatched = Vec::new();
            let mut matched = 0;
            for m in &parsed.modules {
                let Some(target_name) = names.resolve(m.part, &m.name) else {
                    unmatched.push(m.key.as_str());
                    continue;
                };
                let target = &names.targets[&(m.part, target_name.clone())];
                if !fits(m, target) {
                    return Err(EngineError::invalid(
                        lora.field,
                        format!(
                            "LoRA {:?}: {} (down {:?}, up {:?}) does not fit the model's {} \
                             weight {target_name} {:?}; is the LoRA for another model family?",
                            lora.name,
                            m.key,
                            m.down.dims(),
                            m.up.dims(),
                            m.part.label(),
                            target.dims
                        ),
                    ));
                }
                matched += 1;
                plan.entry((m.part, target_name))
                    .or_default()
                    .push((m.clone(), m.scale * lora.weight));
            }
            if matched == 0 {
                let example = unmatched
                    .first()
                    .copied()
                    .or(parsed.unsupported.first().map(String::as_str))
                    .unwrap_or("(no tensors)");
                return Err(EngineError::invalid(
                    lora.field,
                    format!(
                        "LoRA {:?} ({}) matches no layer of model {} ({}); its keys look like \
                         {example}. Only LoRA / LoCon pairs (lora_down/lora_up, lora_A/lora_B) \
                         for this model family can be applied",
                        lora.name,
                        lora.path.display(),
                        self.name,
                        self.architecture.as_str(),
                    ),
                ));
            }
            if !unmatched.is_empty() || !parsed.unsupported.is_empty() {
                tracing::warn!(
                    lora = lora.name,
                    applied = matched,
                    unmatched = unmatched.len(),
                    unsupported = parsed.unsupported.len(),
                    first = unmatched
                        .first()
                        .copied()
                        .or(parsed.unsupported.first().map(String::as_str)),
                    "some LoRA keys match no layer of this model and are skipped"
                );
            }
        }
        let mut merged = Merged::new();
        visit_parts(self, &mut |part, name, _, w| {
            let Some(mods) = plan.get(&(part, name.to_string())) else {
                return Ok(None);
            };
            let target = &names.targets[&(part, name.to_string())];
            let d = delta(mods, target, w.device())?;
            let sum = (w.to_dtype(DType::F32)? + d)?.to_dtype(w.dtype())?;
            merged.insert((part, name.to_string()), sum);
            Ok(None)
        })
        .map_err(model_error)?;
        Ok(merged)
    }

    /// A1111's `Lora hashes` value for `set`: `name: hash, ...` (the name as the request wrote
    /// it, without `:` and `,`); None when no hash could be read.
    pub(crate) fn lora_hashes(&mut self, set: &[ResolvedLora]) -> Option<String> {
        let mut parts = Vec::new();
        for l in set {
            let Ok(s) = stamp(&l.path) else { continue };
            let hash = match self.lora.hashes.get(&l.path) {
                Some((st, h)) if *st == s => h.clone(),
                _ => match addnet_hash(&l.path) {
                    Ok(h) => {
                        self.lora.hashes.insert(l.path.clone(), (s, h.clone()));
                        h
                    }
                    Err(e) => {
                        tracing::warn!(lora = l.name, error = %e, "cannot hash the LoRA file");
                        continue;
                    }
                },
            };
            let alias = l.name.replace([':', ','], "");
            parts.push(format!("{alias}: {}", &hash[..12.min(hash.len())]));
        }
        (!parts.is_empty()).then(|| parts.join(", "))
    }
}
