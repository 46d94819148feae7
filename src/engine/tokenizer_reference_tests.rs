//! The CLIP tokenizer against transformers' `CLIPTokenizer`: every prompt of
//! tests/fixtures/clip-tokenizer/cases.json (written by make_cases.py next to it), in every
//! tokenizer folder layout it describes, must give exactly the reference ids, both raw (what
//! A1111's chunker consumes) and padded/truncated to 77 (what a diffusers pipeline feeds).

use std::path::{Path, PathBuf};

use crate::engine::text::ClipTokenizer;
use serde_json::Value;

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clip-tokenizer")
}

fn ids(value: &Value) -> Vec<u32> {
    value
        .as_array()
        .expect("id list")
        .iter()
        .map(|v| v.as_u64().expect("id") as u32)
        .collect()
}

/// Rebuilds the tokenizer folder a variant was generated from, as make_cases.py built it.
fn build_variant(root: &Path, variant: &Value) -> PathBuf {
    let dir = root.join(variant["name"].as_str().unwrap());
    std::fs::create_dir_all(&dir).unwrap();
    let json_added = variant["tokenizer_json_added_tokens"].as_array().unwrap();
    for base in variant["base"].as_array().unwrap() {
        let base = base.as_str().unwrap();
        let src = fixture_dir().join(base);
        if base == "tokenizer.json" && !json_added.is_empty() {
            let mut tok: Value =
                serde_json::from_str(&std::fs::read_to_string(&src).unwrap()).unwrap();
            let list = tok["added_tokens"].as_array_mut().unwrap();
            list.extend(json_added.iter().cloned());
            std::fs::write(dir.join(base), serde_json::to_vec(&tok).unwrap()).unwrap();
        } else {
            std::fs::copy(&src, dir.join(base)).unwrap();
        }
    }
    for (file, content) in variant["files"].as_object().unwrap() {
        std::fs::write(dir.join(file), serde_json::to_vec(content).unwrap()).unwrap();
    }
    dir
}

#[test]
fn every_case_matches_transformers_clip_tokenizer() {
    let text = std::fs::read_to_string(fixture_dir().join("cases.json")).unwrap();
    let fixture: Value = serde_json::from_str(&text).unwrap();
    let max_len = fixture["max_length"].as_u64().unwrap() as usize;
    let variants = fixture["variants"].as_array().unwrap();
    assert!(variants.len() >= 8, "fixture lost its variants");
    let tmp = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    let mut checked = 0;
    for variant in variants {
        let name = variant["name"].as_str().unwrap();
        let dir = build_variant(tmp.path(), variant);
        let tok = ClipTokenizer::from_dir(&dir).unwrap_or_else(|e| panic!("{name}: {e}"));
        for (what, got, want) in [
            ("bos", tok.bos_id(), &variant["bos_id"]),
            ("eos", tok.eos_id(), &variant["eos_id"]),
            ("pad", tok.pad_id(), &variant["pad_id"]),
        ] {
            if Some(got as u64) != want.as_u64() {
                failures.push(format!("{name}: {what} id {got}, transformers {want}"));
            }
        }
        for case in variant["cases"].as_array().unwrap() {
            let prompt = case["prompt"].as_str().unwrap();
            let raw = tok.encode(prompt);
            if raw != ids(&case["ids"]) {
                failures.push(format!(
                    "{name} {prompt:?}: raw {raw:?}, transformers {:?}",
                    ids(&case["ids"])
                ));
            }
            let padded = tok.encode_padded(prompt, max_len);
            if padded != ids(&case["padded_77"]) {
                failures.push(format!(
                    "{name} {prompt:?}: padded {padded:?}, transformers {:?}",
                    ids(&case["padded_77"])
                ));
            }
            checked += 1;
        }
    }
    assert!(checked >= 500, "only {checked} cases");
    assert!(
        failures.is_empty(),
        "{} of {checked} cases differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The bundled fallback tokenizer for single-file checkpoints (no tokenizer folder) is the
/// same as a Stable Diffusion repository's: SD 1.x pads with `<|endoftext|>`, SD 2.x with "!".
#[test]
fn bundled_tokenizer_equals_the_repository_layouts() {
    let text = std::fs::read_to_string(fixture_dir().join("cases.json")).unwrap();
    let fixture: Value = serde_json::from_str(&text).unwrap();
    let vocab = std::fs::read(fixture_dir().join("vocab.json")).unwrap();
    let merges = std::fs::read(fixture_dir().join("merges.txt")).unwrap();
    for (variant, pad) in [
        ("sd15", crate::engine::text::PadToken::EndOfText),
        (
            "sd2_pad_bang",
            crate::engine::text::PadToken::Token("!".into()),
        ),
    ] {
        let tok = ClipTokenizer::from_bytes(&vocab, &merges, pad).unwrap();
        let v = fixture["variants"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == variant)
            .unwrap();
        for case in v["cases"].as_array().unwrap() {
            let prompt = case["prompt"].as_str().unwrap();
            assert_eq!(
                tok.encode_padded(prompt, 77),
                ids(&case["padded_77"]),
                "{variant} {prompt:?}"
            );
        }
    }
}
