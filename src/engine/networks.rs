//! Extra networks: the LoRA and textual-inversion files the server found under the models
//! directory (A1111's `models/Lora` and `embeddings`), and how a request names them.
//!
//! This module only finds and names files. Applying a LoRA lives in `engine::lora`, and an
//! embedding's vectors in the prompt encoder; both look files up here by the name a prompt
//! (`<lora:name:0.8>`, a bare embedding word) or an API field (`loras`, `embeddings`) uses.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The folder under the models directory that holds LoRA files (`models/loras/`).
pub const LORA_DIR: &str = "loras";
/// The folder under the models directory that holds textual-inversion embeddings.
pub const EMBEDDING_DIR: &str = "embeddings";

/// Weights a LoRA may be applied with (A1111 accepts any float; outside this range images are
/// noise, and a typo such as `<lora:x:80>` is far likelier than intent).
pub const MAX_LORA_WEIGHT: f64 = 10.0;
/// LoRAs one request may apply at once.
pub const MAX_LORAS: usize = 16;

/// One LoRA a request applies: a file of [`LORA_DIR`] by name, and its weight (one weight for
/// the UNet and the text encoder, as diffusers' `set_adapters` and A1111's `<lora:name:w>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraRef {
    pub name: String,
    #[serde(default = "one")]
    pub weight: f64,
}

fn one() -> f64 {
    1.0
}

/// A LoRA or embedding file a request may name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetworkFile {
    /// The name prompts use: the file stem (`elf-ranger` for `elf-ranger.safetensors`), as
    /// A1111 names networks.
    pub name: String,
    pub path: PathBuf,
}

fn is_safetensors(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"))
}

/// The `*.safetensors` files under `dir` (subfolders too, as A1111 scans them), sorted by
/// name; a missing folder has none. Pickled files (`.pt`, `.ckpt`, `.bin`) are not listed:
/// loading them could run code. When two files share a stem the first by path wins.
pub fn scan_network_dir(dir: &Path) -> Vec<NetworkFile> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for p in entries.filter_map(|e| e.ok().map(|e| e.path())) {
            if p.is_dir() {
                stack.push(p);
            } else if p.is_file() && is_safetensors(&p) {
                if let Some(stem) = p.file_stem().and_then(|s| s.to_str()) {
                    found.push(NetworkFile {
                        name: stem.to_string(),
                        path: p.clone(),
                    });
                }
            }
        }
    }
    found.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.path.cmp(&b.path)));
    found.dedup_by(|b, a| a.name == b.name);
    found
}

/// The file of `files` a client means by `wanted`: the exact name, else the same name in
/// another case (A1111 matches names case-sensitively first, then not).
pub fn find_network<'a>(files: &'a [NetworkFile], wanted: &str) -> Option<&'a NetworkFile> {
    let w = wanted.trim();
    let w = w.strip_suffix(".safetensors").unwrap_or(w);
    files
        .iter()
        .find(|f| f.name == w)
        .or_else(|| files.iter().find(|f| f.name.eq_ignore_ascii_case(w)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_subfolders_and_matches_names() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("chars")).unwrap();
        for f in [
            "b.safetensors",
            "chars/Elf-Ranger.safetensors",
            "old.pt",
            "notes.txt",
        ] {
            std::fs::write(dir.path().join(f), b"x").unwrap();
        }
        let files = scan_network_dir(dir.path());
        let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["Elf-Ranger", "b"]);
        assert_eq!(
            find_network(&files, "elf-ranger").map(|f| f.path.clone()),
            Some(dir.path().join("chars/Elf-Ranger.safetensors"))
        );
        assert!(find_network(&files, "b.safetensors").is_some());
        assert!(find_network(&files, "old").is_none());
        assert!(scan_network_dir(&dir.path().join("missing")).is_empty());
    }
}
