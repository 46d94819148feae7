//! Tests of the CLIP tokenizer against the reference ids computed by transformers.

use super::*;
use crate::engine::error::EngineError;
use std::path::PathBuf;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn clip_dir() -> PathBuf {
    fixtures().join("clip-tokenizer")
}

/// `(prompt, ids padded to 77)` from the reference computed by transformers.
pub(crate) fn reference_cases() -> Vec<(String, Vec<u32>)> {
    let text = std::fs::read_to_string(fixtures().join("tiny-sd15/cases.json")).unwrap();
    // Python wrote bare -Infinity (a scheduler setting); serde_json rejects it.
    let text = text.replace("-Infinity", "null");
    let cases: Value = serde_json::from_str(&text).unwrap();
    cases["tokenizer"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let ids = c["input_ids_padded_77"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            (c["prompt"].as_str().unwrap().to_string(), ids)
        })
        .collect()
}

fn assert_matches_reference(tok: &ClipTokenizer) {
    let cases = reference_cases();
    assert_eq!(cases.len(), 5, "fixture changed");
    for (prompt, expected) in cases {
        assert_eq!(expected.len(), 77);
        let mut ids = vec![tok.bos_id()];
        ids.extend(tok.encode(&prompt).into_iter().take(75));
        ids.push(tok.eos_id());
        ids.resize(77, tok.pad_id());
        assert_eq!(ids, expected, "prompt {prompt:?}");
        assert_eq!(
            tok.encode_padded(&prompt, 77),
            expected,
            "prompt {prompt:?}"
        );
    }
}

#[test]
fn vocab_merges_match_reference_ids() {
    let dir = clip_dir();
    let tok = ClipTokenizer::from_vocab_merges(
        &dir.join("vocab.json"),
        &dir.join("merges.txt"),
        PadToken::EndOfText,
    )
    .unwrap();
    assert_eq!(tok.vocab_size(), 49408);
    assert_matches_reference(&tok);
}

#[test]
fn tiny_model_dir_matches_reference_ids() {
    let tok = ClipTokenizer::from_dir(&fixtures().join("tiny-sd15/model/tokenizer")).unwrap();
    assert_eq!(tok.pad_id(), tok.eos_id(), "SD1 pads with <|endoftext|>");
    assert_matches_reference(&tok);
}

#[test]
fn tokenizer_json_matches_reference_ids() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        clip_dir().join("tokenizer.json"),
        tmp.path().join("tokenizer.json"),
    )
    .unwrap();
    assert_matches_reference(&ClipTokenizer::from_dir(tmp.path()).unwrap());
}

#[test]
fn from_bytes_encodes_a_photo_of_a_cat() {
    let vocab = std::fs::read(clip_dir().join("vocab.json")).unwrap();
    let merges = std::fs::read(clip_dir().join("merges.txt")).unwrap();
    let tok = ClipTokenizer::from_bytes(&vocab, &merges, PadToken::EndOfText).unwrap();
    let mut ids = vec![tok.bos_id()];
    ids.extend(tok.encode("a photo of a cat"));
    ids.push(tok.eos_id());
    assert_eq!(ids, [49406, 320, 1125, 539, 320, 2368, 49407]);
    // Case and extra whitespace do not change the ids; html entities are text, as in
    // transformers (only the original OpenAI code unescaped them).
    assert_eq!(
        tok.encode("  A   PHOTO\tof a\ncat "),
        tok.encode("a photo of a cat")
    );
    assert_ne!(tok.encode("salt &amp; pepper"), tok.encode("salt & pepper"));
    // Repeated calls (served from the cache) agree.
    assert_eq!(
        tok.encode("a photo of a cat"),
        tok.encode("a photo of a cat")
    );
    assert_eq!(tok.comma_id(), tok.encode(",").first().copied());
}

#[test]
fn dir_with_only_tokenizer_json_and_sd2_pad() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        clip_dir().join("tokenizer.json"),
        tmp.path().join("tokenizer.json"),
    )
    .unwrap();
    std::fs::write(
        tmp.path().join("tokenizer_config.json"),
        r#"{"pad_token": {"content": "!", "lstrip": false}}"#,
    )
    .unwrap();
    let tok = ClipTokenizer::from_dir(tmp.path()).unwrap();
    // OpenCLIP (SD 2.x) pads with "!", the first vocabulary entry.
    assert_eq!(tok.pad_id(), 0);
    let padded = tok.encode_padded("a photo of a cat", 10);
    assert_eq!(padded, [49406, 320, 1125, 539, 320, 2368, 49407, 0, 0, 0]);
}

#[test]
fn special_tokens_map_gives_pad_when_config_is_silent() {
    let tmp = tempfile::tempdir().unwrap();
    for f in ["vocab.json", "merges.txt"] {
        std::fs::copy(clip_dir().join(f), tmp.path().join(f)).unwrap();
    }
    std::fs::write(
        tmp.path().join("tokenizer_config.json"),
        r#"{"model_max_length": 77}"#,
    )
    .unwrap();
    std::fs::write(
        tmp.path().join("special_tokens_map.json"),
        r#"{"pad_token": "!"}"#,
    )
    .unwrap();
    assert_eq!(ClipTokenizer::from_dir(tmp.path()).unwrap().pad_id(), 0);
}

#[test]
fn missing_and_malformed_files_are_model_errors_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope-vocab.json");
    let err = ClipTokenizer::from_vocab_merges(
        &missing,
        &clip_dir().join("merges.txt"),
        PadToken::EndOfText,
    )
    .unwrap_err();
    assert!(
        matches!(&err, EngineError::Model(m) if m.contains("nope-vocab.json")),
        "{err}"
    );

    let broken = tempfile::tempdir().unwrap();
    std::fs::write(broken.path().join("tokenizer.json"), "{ not json").unwrap();
    let err = ClipTokenizer::from_dir(broken.path()).unwrap_err();
    assert!(
        matches!(&err, EngineError::Model(m) if m.contains("tokenizer.json")),
        "{err}"
    );
    std::fs::write(broken.path().join("tokenizer_config.json"), "[1]").unwrap();
    std::fs::copy(
        clip_dir().join("tokenizer.json"),
        broken.path().join("tokenizer.json"),
    )
    .unwrap();
    let err = ClipTokenizer::from_dir(broken.path()).unwrap_err();
    assert!(
        matches!(&err, EngineError::Model(m) if m.contains("tokenizer_config.json")),
        "{err}"
    );

    let vocab = tmp.path().join("bad-vocab.json");
    std::fs::write(&vocab, "[1, 2]").unwrap();
    let err = ClipTokenizer::from_vocab_merges(
        &vocab,
        &clip_dir().join("merges.txt"),
        PadToken::EndOfText,
    )
    .unwrap_err();
    assert!(
        matches!(&err, EngineError::Model(m) if m.contains("bad-vocab.json")),
        "{err}"
    );

    let err = ClipTokenizer::from_bytes(br#"{"a": 0}"#, b"#version: 0.2\n", PadToken::EndOfText)
        .unwrap_err();
    assert!(
        matches!(&err, EngineError::Model(m) if m.contains("<|startoftext|>")),
        "{err}"
    );

    let err = ClipTokenizer::from_dir(tmp.path()).unwrap_err();
    assert!(
        matches!(&err, EngineError::Model(m) if m.contains("tokenizer.json")),
        "{err}"
    );

    let err = ClipTokenizer::from_dir(&clip_dir().join("vocab.json")).unwrap_err();
    assert!(matches!(err, EngineError::Model(_)));
}

#[test]
fn unknown_pad_token_is_rejected() {
    let vocab = std::fs::read(clip_dir().join("vocab.json")).unwrap();
    let merges = std::fs::read(clip_dir().join("merges.txt")).unwrap();
    let err = ClipTokenizer::from_bytes(&vocab, &merges, PadToken::Token("<no-such>".into()))
        .unwrap_err();
    assert!(
        matches!(&err, EngineError::Model(m) if m.contains("<no-such>")),
        "{err}"
    );
}

#[test]
fn sd2_pad_token_is_special_inside_the_prompt() {
    let vocab = std::fs::read(clip_dir().join("vocab.json")).unwrap();
    let merges = std::fs::read(clip_dir().join("merges.txt")).unwrap();
    let sd1 = ClipTokenizer::from_bytes(&vocab, &merges, PadToken::EndOfText).unwrap();
    let sd2 = ClipTokenizer::from_bytes(&vocab, &merges, PadToken::Token("!".into())).unwrap();
    // "!" ends a word as "!</w>" (256) for SD 1.x, but is the pad token (0) for SD 2.x, split
    // out before BPE, so "!!" is two pads rather than the merged "!!</w>".
    assert_eq!(sd1.encode("wow!"), [2781, 256]);
    assert_eq!(sd2.encode("wow!"), [2781, 0]);
    assert_eq!(sd1.encode("hi!!"), [1883, 748]);
    assert_eq!(sd2.encode("hi!!"), [1883, 0, 0]);
    assert_eq!(sd2.encode_padded("hi!", 6), [49406, 1883, 0, 49407, 0, 0]);
}
