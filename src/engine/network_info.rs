//! What the LoRA listing shows about a file without loading it: the safetensors header's
//! `__metadata__` (A1111's `/sdapi/v1/loras` `metadata`). Only the header is read, so listing a
//! folder of large files stays cheap. (Embeddings are listed by `engine::embeddings`.)

use std::fs::File;
use std::io::Read;
use std::path::Path;

use serde_json::{Map, Value};

/// Headers larger than this are refused (the safetensors format's own limit is 100 MB; real
/// LoRA headers with kohya's tag frequencies stay well under a few MB).
const MAX_HEADER_BYTES: u64 = 100 * 1024 * 1024;

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
}
