//! Textual-inversion embeddings: A1111-format `*.safetensors` files of `models/embeddings/`,
//! read (header only, for listings) or loaded (vectors, cached per file and mtime), and matched
//! to a model's text encoders by width, as A1111's `EmbeddingDatabase` sorts them into loaded
//! and skipped.
//!
//! Formats: one 2-d tensor (`emb_params` `[n, width]` as A1111 writes it, or any single tensor
//! such as `string_to_param.*`, `*`; a 1-d tensor is one vector), or SDXL's pair `clip_l`
//! `[n, 768]` + `clip_g` `[n, 1280]`. f16/bf16 vectors are converted to f32.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use candle_core::{DType, Device, Tensor};
use serde::Serialize;
use sha2::Digest;

use super::error::{EngineError, Result};
use super::networks::{find_network, scan_network_dir, NetworkFile};
use super::text::prompt::TOKENS_PER_CHUNK;

/// The most vectors an embedding may have: it must fit in one 75-token chunk (A1111 would build
/// a chunk longer than the encoder takes).
pub const MAX_VECTORS: usize = TOKENS_PER_CHUNK;
/// Embeddings one request may require by name (`embeddings`).
pub const MAX_EMBEDDINGS: usize = 32;
/// How many names an error lists as known.
const KNOWN_LISTED: usize = 8;

/// What a listing shows of one embedding file (A1111's `/sdapi/v1/embeddings` entries).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EmbeddingInfo {
    /// The name prompts use: the file stem.
    pub name: String,
    pub path: PathBuf,
    /// Vectors (tokens) it takes in a prompt; 0 when the file is not an embedding.
    pub vectors: usize,
    /// The stored tensor's shape: `[n, width]`, or for an SDXL pair `[n, 768 + 1280]`.
    pub shape: Vec<usize>,
    /// A1111's `shape`: the width summed over the encoders it is for (768, 1024, 2048).
    pub dim: usize,
    /// Whether it fits the default model's text encoders (A1111's `loaded`, else `skipped`).
    pub fits: bool,
    /// Why the file cannot be used at all (not an embedding, unreadable); None when it can.
    pub error: Option<String>,
}

/// The vectors' count and per-encoder widths, read from a safetensors header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddingShape {
    pub vectors: usize,
    /// One width per text encoder, in encoder order (`[clip_l, clip_g]` for a pair).
    pub widths: Vec<usize>,
    /// The tensor names holding each encoder's vectors.
    keys: Vec<String>,
}

impl EmbeddingShape {
    /// Whether the vectors fit a model whose text encoders are `widths` wide (A1111 compares
    /// the summed width with the model's expected one; the pair's order matters here too).
    pub fn fits(&self, widths: &[usize]) -> bool {
        self.widths == widths
    }
}

/// One tensor entry of a safetensors header.
#[derive(serde::Deserialize)]
struct HeaderEntry {
    dtype: String,
    shape: Vec<usize>,
}

/// Reads a safetensors file's header: tensor names and shapes, without the data.
fn read_header(path: &Path) -> Result<HashMap<String, HeaderEntry>> {
    let mut file = std::fs::File::open(path)?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len)
        .map_err(|_| bad(path, "too short for a safetensors file"))?;
    let n = u64::from_le_bytes(len);
    if n > 100 << 20 {
        return Err(bad(path, "safetensors header over 100 MiB"));
    }
    let mut header = vec![0u8; n as usize];
    file.read_exact(&mut header)
        .map_err(|_| bad(path, "truncated safetensors header"))?;
    let mut map: HashMap<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| bad(path, &format!("bad header: {e}")))?;
    map.remove("__metadata__");
    map.into_iter()
        .map(|(k, v)| {
            serde_json::from_value(v)
                .map(|e| (k.clone(), e))
                .map_err(|e| bad(path, &format!("bad header entry {k:?}: {e}")))
        })
        .collect()
}

fn bad(path: &Path, why: &str) -> EngineError {
    EngineError::Model(format!("embedding {}: {why}", path.display()))
}

/// Which tensors hold the vectors, by A1111's rules: an SDXL `clip_l`/`clip_g` pair, else
/// `emb_params`, else the file's only tensor.
pub fn read_shape(path: &Path) -> Result<EmbeddingShape> {
    let header = read_header(path)?;
    let rows = |key: &str| -> Result<(usize, usize)> {
        let e = &header[key];
        if !matches!(e.dtype.as_str(), "F32" | "F16" | "BF16" | "F64") {
            return Err(bad(
                path,
                &format!("{key} is {}, not a float tensor", e.dtype),
            ));
        }
        match e.shape.as_slice() {
            [d] => Ok((1, *d)),
            [n, d] => Ok((*n, *d)),
            s => Err(bad(
                path,
                &format!("{key} has shape {s:?}, not [vectors, width]"),
            )),
        }
    };
    let keys: Vec<String> = if header.contains_key("clip_l") && header.contains_key("clip_g") {
        vec!["clip_l".into(), "clip_g".into()]
    } else if header.contains_key("emb_params") {
        vec!["emb_params".into()]
    } else if header.len() == 1 {
        header.keys().cloned().collect()
    } else {
        let mut names: Vec<&String> = header.keys().collect();
        names.sort();
        return Err(bad(
            path,
            &format!("no emb_params, clip_l/clip_g or single tensor (has {names:?})"),
        ));
    };
    let dims = keys.iter().map(|k| rows(k)).collect::<Result<Vec<_>>>()?;
    let vectors = dims[0].0;
    if dims.iter().any(|&(n, _)| n != vectors) {
        return Err(bad(path, "clip_l and clip_g have different vector counts"));
    }
    if !(1..=MAX_VECTORS).contains(&vectors) || dims.iter().any(|&(_, d)| d == 0) {
        return Err(bad(
            path,
            &format!("{vectors} vectors; an embedding has 1 to {MAX_VECTORS}"),
        ));
    }
    Ok(EmbeddingShape {
        vectors,
        widths: dims.iter().map(|&(_, d)| d).collect(),
        keys,
    })
}

/// A loaded embedding: its vectors for each text encoder.
#[derive(Debug)]
pub struct Embedding {
    pub name: String,
    /// A1111's short hash: the first 12 hex digits of the file's SHA-256.
    pub hash: String,
    pub shape: EmbeddingShape,
    /// `[vectors, width]` f32 on the CPU, one per encoder in [`EmbeddingShape::widths`] order.
    tensors: Vec<Tensor>,
}

impl Embedding {
    /// Loads `file` (the whole file: embeddings are kilobytes).
    pub fn load(file: &NetworkFile) -> Result<Self> {
        let shape = read_shape(&file.path)?;
        let bytes = std::fs::read(&file.path)?;
        let hash: String = sha2::Sha256::digest(&bytes)
            .iter()
            .take(6)
            .map(|b| format!("{b:02x}"))
            .collect();
        let all = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
            .map_err(|e| bad(&file.path, &e.to_string()))?;
        let tensors = shape
            .keys
            .iter()
            .zip(&shape.widths)
            .map(|(k, &w)| -> Result<Tensor> {
                let t = all[k].to_dtype(DType::F32)?;
                Ok(t.reshape((shape.vectors, w))?)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            name: file.name.clone(),
            hash,
            shape,
            tensors,
        })
    }

    /// Builds one from vectors in memory (tests).
    #[cfg(test)]
    pub fn from_tensors(name: &str, tensors: Vec<Tensor>) -> Result<Self> {
        let (vectors, _) = tensors[0].dims2()?;
        let widths = tensors
            .iter()
            .map(|t| Ok(t.dims2()?.1))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            name: name.to_string(),
            hash: "000000000000".into(),
            shape: EmbeddingShape {
                vectors,
                widths,
                keys: Vec::new(),
            },
            tensors,
        })
    }

    /// The vectors for text encoder `encoder` (0 = the first, SDXL's CLIP-L).
    pub fn vectors_for(&self, encoder: usize) -> Option<&Tensor> {
        self.tensors.get(encoder)
    }
}

/// The embeddings folder with the vectors loaded so far, each kept until its file changes.
/// Lives on the engine thread.
pub struct EmbeddingLibrary {
    dir: Option<PathBuf>,
    loaded: Mutex<HashMap<PathBuf, Cached>>,
}

/// A loaded embedding with the modification time and size of the file it came from.
type Cached = (Option<SystemTime>, u64, Arc<Embedding>);

fn stamp(path: &Path) -> (Option<SystemTime>, u64) {
    match std::fs::metadata(path) {
        Ok(m) => (m.modified().ok(), m.len()),
        Err(_) => (None, 0),
    }
}

impl EmbeddingLibrary {
    pub fn new(dir: Option<PathBuf>) -> Self {
        Self {
            dir,
            loaded: Mutex::new(HashMap::new()),
        }
    }

    fn files(&self) -> Vec<NetworkFile> {
        self.dir
            .as_deref()
            .map(scan_network_dir)
            .unwrap_or_default()
    }

    fn load(&self, file: &NetworkFile) -> Result<Arc<Embedding>> {
        let (mtime, len) = stamp(&file.path);
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((m, l, e)) = loaded.get(&file.path) {
            if *m == mtime && *l == len && mtime.is_some() && e.name == file.name {
                return Ok(e.clone());
            }
        }
        let e = Arc::new(Embedding::load(file)?);
        loaded.insert(file.path.clone(), (mtime, len, e.clone()));
        Ok(e)
    }

    /// The embeddings a model with text encoders `widths` wide can use, sorted by name; every
    /// name of `required` must be among them (else an `embeddings` input error listing known
    /// ones). Files that are not embeddings, or do not fit, are left out.
    pub fn for_model(&self, widths: &[usize], required: &[String]) -> Result<Vec<Arc<Embedding>>> {
        let files = self.files();
        for name in required {
            let Some(file) = find_network(&files, name) else {
                let known: Vec<&str> = files
                    .iter()
                    .take(KNOWN_LISTED)
                    .map(|f| f.name.as_str())
                    .collect();
                return Err(EngineError::invalid(
                    "embeddings",
                    format!(
                        "unknown embedding {name:?}; known: {}",
                        if known.is_empty() {
                            "(none in the models folder's embeddings/)".to_string()
                        } else {
                            known.join(", ")
                        }
                    ),
                ));
            };
            let fits = read_shape(&file.path)
                .map_err(|e| EngineError::invalid("embeddings", format!("{name:?}: {e}")))?;
            if !fits.fits(widths) {
                return Err(EngineError::invalid(
                    "embeddings",
                    format!(
                        "embedding {name:?} is for text encoders {:?} wide; this model's are {widths:?}",
                        fits.widths
                    ),
                ));
            }
        }
        let mut usable = Vec::new();
        for file in &files {
            match read_shape(&file.path) {
                Ok(s) if s.fits(widths) => match self.load(file) {
                    Ok(e) => usable.push(e),
                    Err(e) => tracing::warn!(error = %e, "embedding skipped"),
                },
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "not an embedding"),
            }
        }
        Ok(usable)
    }
}

/// The `embeddings` names, trimmed, without repeats; an empty name or too many is an error.
pub(crate) fn check_names(names: Vec<String>) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::with_capacity(names.len());
    for name in names {
        let name = name.trim();
        if name.is_empty() || name.chars().count() > 200 {
            return Err(EngineError::invalid(
                "embeddings",
                "each name must be 1 to 200 characters (an embedding file's name)",
            ));
        }
        if !out.iter().any(|n| n == name) {
            out.push(name.to_string());
        }
    }
    if out.len() > MAX_EMBEDDINGS {
        return Err(EngineError::invalid(
            "embeddings",
            format!("at most {MAX_EMBEDDINGS} embeddings, got {}", out.len()),
        ));
    }
    Ok(out)
}

/// Every file of the embeddings folder `dir` with its shape, and whether it fits a model whose
/// text encoders are `widths` wide (None = no model known: nothing fits).
pub fn list_embeddings(dir: Option<&Path>, widths: Option<&[usize]>) -> Vec<EmbeddingInfo> {
    let files = dir.map(scan_network_dir).unwrap_or_default();
    files
        .into_iter()
        .map(|f| match read_shape(&f.path) {
            Ok(s) => EmbeddingInfo {
                fits: widths.is_some_and(|w| s.fits(w)),
                dim: s.widths.iter().sum(),
                shape: vec![s.vectors, s.widths.iter().sum()],
                vectors: s.vectors,
                name: f.name,
                path: f.path,
                error: None,
            },
            Err(e) => EmbeddingInfo {
                name: f.name,
                path: f.path,
                vectors: 0,
                shape: Vec::new(),
                dim: 0,
                fits: false,
                error: Some(e.to_string()),
            },
        })
        .collect()
}

#[cfg(test)]
#[path = "embeddings_tests.rs"]
mod tests;
