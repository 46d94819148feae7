//! Reading one LoRA file: kohya / A1111 / LyCORIS-LoCon keys (`lora_unet_*`, `lora_te_*`,
//! SDXL's `lora_te1_*` / `lora_te2_*`, with `.lora_down.weight`, `.lora_up.weight`, `.alpha`)
//! and diffusers / PEFT keys (`unet.*`, `text_encoder.*`, `text_encoder_2.*` with
//! `.lora_A.weight` / `.lora_B.weight`, or the older `.lora.down.weight` / `.lora.up.weight`),
//! into up/down pairs with their scale, all in f32 on the CPU whatever dtype the file stores.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use candle_core::{DType, Tensor};
use serde_json::Value;

use crate::engine::loading::checkpoint::load_weight_file;

/// Which network of the pipeline a module belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Part {
    Unet,
    /// The (first) CLIP text encoder: SD1's and SD2's only one, SDXL's CLIP-L.
    TextEncoder,
    /// SDXL's OpenCLIP-G encoder.
    TextEncoder2,
}

impl Part {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Part::Unet => "UNet",
            Part::TextEncoder => "text encoder",
            Part::TextEncoder2 => "text encoder 2",
        }
    }

    /// The prefix diffusers' `lora_adapter_metadata` keys carry for this part.
    fn metadata_prefix(self) -> &'static str {
        match self {
            Part::Unet => "unet",
            Part::TextEncoder => "text_encoder",
            Part::TextEncoder2 => "text_encoder_2",
        }
    }
}

/// How a file spells module names: kohya joins every name part with `_` (ambiguous, resolved
/// against the model's own names), diffusers keeps the dots.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum ModuleName {
    Underscored(String),
    Dotted(String),
}

impl ModuleName {
    pub(crate) fn as_str(&self) -> &str {
        match self {
            ModuleName::Underscored(s) | ModuleName::Dotted(s) => s,
        }
    }
}

/// One low-rank pair: `delta = scale * up @ down`.
#[derive(Debug, Clone)]
pub(crate) struct LoraModule {
    pub part: Part,
    pub name: ModuleName,
    /// The key prefix in the file, for messages.
    pub key: String,
    /// `[r, in]` or `[r, in, kh, kw]`.
    pub down: Tensor,
    /// `[out, r]` or `[out, r, 1, 1]`.
    pub up: Tensor,
    /// `alpha / rank` (kohya), `lora_alpha / r` (PEFT metadata), or 1.
    pub scale: f64,
}

/// A parsed LoRA file.
#[derive(Debug, Clone, Default)]
pub(crate) struct LoraFile {
    pub modules: Vec<LoraModule>,
    /// Keys this engine cannot apply (LoHa, LoKr, DoRA, bundled embeddings, ...).
    pub unsupported: Vec<String>,
}

#[derive(Default)]
struct Pair {
    down: Option<Tensor>,
    up: Option<Tensor>,
    alpha: Option<f64>,
}

enum Leaf {
    Down,
    Up,
    Alpha,
}

const KOHYA: [(&str, Part); 4] = [
    ("lora_unet_", Part::Unet),
    ("lora_te1_", Part::TextEncoder),
    ("lora_te2_", Part::TextEncoder2),
    ("lora_te_", Part::TextEncoder),
];
const DIFFUSERS: [(&str, Part); 3] = [
    ("unet.", Part::Unet),
    ("text_encoder_2.", Part::TextEncoder2),
    ("text_encoder.", Part::TextEncoder),
];
const KOHYA_LEAVES: [(&str, Leaf); 3] = [
    (".lora_down.weight", Leaf::Down),
    (".lora_up.weight", Leaf::Up),
    (".alpha", Leaf::Alpha),
];
const DIFFUSERS_LEAVES: [(&str, Leaf); 7] = [
    (".lora_A.weight", Leaf::Down),
    (".lora_B.weight", Leaf::Up),
    (".lora_A.default.weight", Leaf::Down),
    (".lora_B.default.weight", Leaf::Up),
    (".lora.down.weight", Leaf::Down),
    (".lora.up.weight", Leaf::Up),
    (".alpha", Leaf::Alpha),
];

/// Splits a key into its part, module name and leaf; None for keys that are not LoRA pairs.
fn classify(key: &str) -> Option<(Part, ModuleName, Leaf)> {
    for (prefix, part) in KOHYA {
        if let Some(rest) = key.strip_prefix(prefix) {
            for (suffix, leaf) in KOHYA_LEAVES {
                if let Some(module) = rest.strip_suffix(suffix) {
                    let module = match part {
                        Part::Unet => module,
                        _ => module.strip_prefix("text_model_").unwrap_or(module),
                    };
                    return Some((part, ModuleName::Underscored(module.to_string()), leaf));
                }
            }
            return None;
        }
    }
    for (prefix, part) in DIFFUSERS {
        if let Some(rest) = key.strip_prefix(prefix) {
            for (suffix, leaf) in DIFFUSERS_LEAVES {
                if let Some(module) = rest.strip_suffix(suffix) {
                    // transformers' CLIPTextModel nests everything under `text_model.`, which
                    // diffusers strips and our encoder's names never carry.
                    let module = match part {
                        Part::Unet => module,
                        _ => module.strip_prefix("text_model.").unwrap_or(module),
                    };
                    return Some((part, ModuleName::Dotted(module.to_string()), leaf));
                }
            }
            return None;
        }
    }
    None
}

/// The safetensors header's `__metadata__` (string values only, as the format defines it).
fn read_metadata(path: &Path) -> BTreeMap<String, String> {
    let read = || -> Option<BTreeMap<String, String>> {
        let mut file = std::fs::File::open(path).ok()?;
        let mut len = [0u8; 8];
        file.read_exact(&mut len).ok()?;
        let len = u64::from_le_bytes(len);
        if len > 100 << 20 {
            return None;
        }
        let mut header = vec![0u8; len as usize];
        file.read_exact(&mut header).ok()?;
        let json: Value = serde_json::from_slice(&header).ok()?;
        let meta = json.get("__metadata__")?.as_object()?;
        Some(
            meta.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect(),
        )
    };
    read().unwrap_or_default()
}

/// diffusers' `lora_adapter_metadata`: the PEFT `LoraConfig` of each part, flattened to
/// `unet.r`, `unet.lora_alpha`, `unet.rank_pattern`, ... in one JSON string.
struct PeftConfig(serde_json::Map<String, Value>);

impl PeftConfig {
    fn from_metadata(meta: &BTreeMap<String, String>) -> Option<Self> {
        let raw = meta.get("lora_adapter_metadata")?;
        match serde_json::from_str::<Value>(raw).ok()? {
            Value::Object(map) => Some(Self(map)),
            _ => None,
        }
    }

    fn get(&self, part: Part, key: &str) -> Option<&Value> {
        self.0.get(&format!("{}.{key}", part.metadata_prefix()))
    }

    /// PEFT's `rank_pattern` / `alpha_pattern`: a key applies to a module whose name is the
    /// key or ends with `.key`.
    fn pattern(&self, part: Part, key: &str, module: &str) -> Option<f64> {
        let map = self.get(part, key)?.as_object()?;
        map.iter()
            .find(|(k, _)| module == k.as_str() || module.ends_with(&format!(".{k}")))
            .and_then(|(_, v)| v.as_f64())
    }

    /// `lora_alpha / r` (or `/ sqrt(r)` with rsLoRA) for one module; None when this part has
    /// no config in the metadata.
    fn scale(&self, part: Part, module: &str, rank: usize) -> Option<f64> {
        let alpha = self
            .pattern(part, "alpha_pattern", module)
            .or_else(|| self.get(part, "lora_alpha")?.as_f64())?;
        let r = self
            .pattern(part, "rank_pattern", module)
            .or_else(|| self.get(part, "r")?.as_f64())
            .unwrap_or(rank as f64);
        let rslora = self
            .get(part, "use_rslora")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        Some(if rslora { alpha / r.sqrt() } else { alpha / r })
    }

    fn uses_dora(&self, part: Part) -> bool {
        self.get(part, "use_dora")
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }
}

fn scalar(t: &Tensor) -> candle_core::Result<f64> {
    Ok(t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?[0])
}

impl LoraFile {
    /// Reads `path`; errors are plain text for the caller to put behind the LoRA's name.
    pub(crate) fn read(path: &Path) -> Result<Self, String> {
        let tensors = load_weight_file(path, "LoRA file").map_err(|e| e.to_string())?;
        let meta = read_metadata(path);
        let peft = PeftConfig::from_metadata(&meta);
        let mut pairs: BTreeMap<(Part, ModuleName), (String, Pair)> = BTreeMap::new();
        let mut unsupported = Vec::new();
        for (key, tensor) in tensors {
            let Some((part, name, leaf)) = classify(&key) else {
                unsupported.push(key);
                continue;
            };
            let prefix = key
                .strip_suffix(match leaf {
                    Leaf::Alpha => ".alpha",
                    _ => ".weight",
                })
                .unwrap_or(&key)
                .to_string();
            let entry = pairs
                .entry((part, name))
                .or_insert_with(|| (prefix, Pair::default()));
            let to_f32 = |t: Tensor| t.to_dtype(DType::F32).map_err(|e| format!("{key}: {e}"));
            match leaf {
                Leaf::Down => entry.1.down = Some(to_f32(tensor)?),
                Leaf::Up => entry.1.up = Some(to_f32(tensor)?),
                Leaf::Alpha => {
                    entry.1.alpha = Some(scalar(&tensor).map_err(|e| format!("{key}: {e}"))?)
                }
            }
        }
        let mut modules = Vec::new();
        for ((part, name), (key, pair)) in pairs {
            let (Some(down), Some(up)) = (pair.down, pair.up) else {
                unsupported.push(key);
                continue;
            };
            if peft.as_ref().is_some_and(|p| p.uses_dora(part)) {
                return Err("DoRA adapters (use_dora) are not supported".into());
            }
            let rank = down.dims().first().copied().unwrap_or(0);
            if rank == 0 || down.rank() < 2 || up.rank() < 2 {
                return Err(format!(
                    "{key}: down {:?} / up {:?} is no low-rank pair",
                    down.dims(),
                    up.dims()
                ));
            }
            let scale = match (pair.alpha, &peft) {
                (Some(alpha), _) => alpha / rank as f64,
                (None, Some(p)) => p.scale(part, name.as_str(), rank).unwrap_or(1.0),
                // No alpha: alpha = rank, as kohya and diffusers read it.
                (None, None) => 1.0,
            };
            modules.push(LoraModule {
                part,
                name,
                key,
                down,
                up,
                scale,
            });
        }
        unsupported.sort();
        Ok(Self {
            modules,
            unsupported,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_classified_by_format_and_part() {
        let (p, n, _) = classify("lora_te2_text_model_encoder_layers_0_mlp_fc1.alpha").unwrap();
        assert_eq!(p, Part::TextEncoder2);
        assert_eq!(
            n,
            ModuleName::Underscored("encoder_layers_0_mlp_fc1".into())
        );
        let (p, n, _) =
            classify("text_encoder.text_model.encoder.layers.1.self_attn.q_proj.lora_A.weight")
                .unwrap();
        assert_eq!(p, Part::TextEncoder);
        assert_eq!(
            n,
            ModuleName::Dotted("encoder.layers.1.self_attn.q_proj".into())
        );
        let (p, n, _) = classify("unet.mid_block.attentions.0.proj_in.lora_B.weight").unwrap();
        assert_eq!(p, Part::Unet);
        assert_eq!(
            n,
            ModuleName::Dotted("mid_block.attentions.0.proj_in".into())
        );
        assert!(classify("lora_unet_x.hada_w1_a").is_none());
        assert!(classify("emb_params").is_none());
    }
}
