//! What the listing endpoints show about LoRA and embedding files without loading them: the
//! safetensors header's `__metadata__` (A1111's `/sdapi/v1/loras` `metadata`) and an
//! embedding's vector count and width (A1111's `/sdapi/v1/embeddings`). Only the header is
//! read, so listing a folder of large files stays cheap.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::{Map, Value};

use super::networks::NetworkFile;

/// Headers larger than this are refused (the safetensors format's own limit is 100 MB; real
/// LoRA headers with kohya's tag frequencies stay well under a few MB).
const MAX_HEADER_BYTES: u64 = 100 * 1024 * 1024;

/// An embedding file as A1111 lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EmbeddingInfo {
    /// The word prompts use: the file stem.
    pub name: String,
    pub path: PathBuf,
    /// How many token vectors the embedding inserts.
    pub vectors: usize,
    /// The tensor's shape (`[vectors, width]`; SDXL's `clip_l`/`clip_g` pair: the widths summed).
    pub shape: Vec<usize>,
    /// A1111's `shape`: the vector width (summed over a pair's encoders).
    pub dim: usize,
    /// Whether the served model's text encoder takes vectors of this width (A1111 lists the
    /// others under `skipped`).
    pub fits: bool,
    /// Why the file cannot be used at all; `None` when it can.
    pub error: Option<String>,
}

/// The JSON header of a safetensors file; `None` when the file cannot be read or is not one.
fn read_header(path: &Path) -> Option<Map<String, Value>> {
    let mut f = File::open(path).ok()?;
    let size = f.metadata().ok()?.len();
    let mut len = [0u8; 8];
    f.read_exact(&mut len).ok()?;
    let n = u64::from_le_bytes(len);
    if n > MAX_HEADER_BYTES || n.saturating_add(8) > size {
        return None;
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).ok()?;
    serde_json::from_slice(&header).ok()
}

/// The header's `__metadata__` as A1111 returns it: every entry, with string values that look
/// like JSON objects (kohya's `ss_network_args`, `ss_tag_frequency`) parsed; `{}` when the file
/// has none or cannot be read.
pub fn safetensors_metadata(path: &Path) -> Map<String, Value> {
    let Some(Value::Object(meta)) = read_header(path).and_then(|mut h| h.remove("__metadata__"))
    else {
        return Map::new();
    };
    meta.into_iter()
        .map(|(k, v)| {
            let v = match v {
                Value::String(s) if s.starts_with('{') => {
                    serde_json::from_str(&s).unwrap_or(s.into())
                }
                other => other,
            };
            (k, v)
        })
        .collect()
}

fn tensor_shape(info: &Value) -> Option<Vec<usize>> {
    info.get("shape")?
        .as_array()?
        .iter()
        .map(|d| d.as_u64().map(|d| d as usize))
        .collect()
}

/// The shape of an embedding file's vectors: A1111's `emb_params`, SDXL's `clip_l` + `clip_g`
/// (widths summed), else the file's only tensor. `None` when it is none of these.
fn embedding_shape(header: &Map<String, Value>) -> Option<Vec<usize>> {
    let shape = |k: &str| header.get(k).and_then(tensor_shape);
    if let Some(s) = shape("emb_params") {
        return Some(s);
    }
    if let (Some(l), Some(g)) = (shape("clip_l"), shape("clip_g")) {
        let rows = *g.first()?;
        return Some(vec![rows, l.last()? + g.last()?]);
    }
    let mut tensors = header.iter().filter(|(k, _)| *k != "__metadata__");
    match (tensors.next(), tensors.next()) {
        (Some((_, info)), None) => tensor_shape(info),
        _ => None,
    }
}

/// An embedding file's listing; `None` when its header is unreadable or names no embedding.
/// `width` is the served text encoder's width (768 for SD 1.x, 2048 for SDXL's pair), when
/// known: a file of another width does not fit.
pub fn embedding_info(file: &NetworkFile, width: Option<usize>) -> Option<EmbeddingInfo> {
    let shape = embedding_shape(&read_header(&file.path)?)?;
    let vectors = if shape.len() > 1 { shape[0] } else { 1 };
    let dim = shape.last().copied().unwrap_or(0);
    Some(EmbeddingInfo {
        name: file.name.clone(),
        path: file.path.clone(),
        vectors,
        shape,
        dim,
        fits: width.is_none_or(|w| w == dim),
        error: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, header: Value, data: usize) {
        let h = header.to_string();
        let mut bytes = (h.len() as u64).to_le_bytes().to_vec();
        bytes.extend(h.as_bytes());
        bytes.extend(std::iter::repeat_n(0u8, data));
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn metadata_parses_json_looking_strings_and_tolerates_junk() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.safetensors");
        write(
            &p,
            serde_json::json!({"__metadata__": {"ss_network_dim": "4",
                "ss_network_args": "{\"algo\": \"locon\"}", "odd": "{not json"}}),
            0,
        );
        let m = safetensors_metadata(&p);
        assert_eq!(m["ss_network_dim"], "4");
        assert_eq!(m["ss_network_args"]["algo"], "locon");
        assert_eq!(m["odd"], "{not json");
        std::fs::write(
            dir.path().join("bad.safetensors"),
            b"\xff\xff\xff\xff\xff\xff\xff\xff",
        )
        .unwrap();
        assert!(safetensors_metadata(&dir.path().join("bad.safetensors")).is_empty());
        assert!(safetensors_metadata(&dir.path().join("missing.safetensors")).is_empty());
    }

    #[test]
    fn embedding_shapes_of_sd1_and_sdxl_files() {
        let dir = tempfile::tempdir().unwrap();
        let one = |name: &str, header: Value| {
            let path = dir.path().join(format!("{name}.safetensors"));
            write(&path, header, 0);
            NetworkFile {
                name: name.into(),
                path,
            }
        };
        let sd1 = one(
            "bad-hands",
            serde_json::json!({"emb_params": {"dtype": "F32", "shape": [3, 768], "data_offsets": [0, 0]}}),
        );
        let info = embedding_info(&sd1, Some(768)).unwrap();
        assert_eq!(
            (info.vectors, info.shape.clone(), info.fits),
            (3, vec![3, 768], true)
        );
        assert!(!embedding_info(&sd1, Some(1024)).unwrap().fits);
        let xl = one(
            "xl",
            serde_json::json!({
                "clip_l": {"dtype": "F16", "shape": [2, 768], "data_offsets": [0, 0]},
                "clip_g": {"dtype": "F16", "shape": [2, 1280], "data_offsets": [0, 0]}}),
        );
        let info = embedding_info(&xl, None).unwrap();
        assert_eq!((info.vectors, info.shape), (2, vec![2, 2048]));
        let two = one(
            "two",
            serde_json::json!({
                "a": {"dtype": "F16", "shape": [2, 8], "data_offsets": [0, 0]},
                "b": {"dtype": "F16", "shape": [2, 8], "data_offsets": [0, 0]}}),
        );
        assert!(embedding_info(&two, None).is_none());
    }
}
