//! Textual-inversion embeddings in the conditioning: diffusers' `load_textual_inversion` prompt
//! embeddings on the tiny SD 1.x and SDXL models (`tests/fixtures/tiny-embeddings`), and A1111's
//! placement rules, checked by an embedding whose vectors are a real word's token embeddings.

use std::path::PathBuf;
use std::sync::Arc;

use candle_core::{Device, Tensor};
use serde_json::Value;

use super::conditioning::Conditioning;
use super::embeddings::{Embedding, EmbeddingLibrary};
use super::loading::model::{LoadOptions, ModelSource, StableDiffusion};
use super::text::{tokenize_with_embeddings, EmbeddingWords};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn load(name: &str) -> StableDiffusion {
    let dir = fixtures().join(name).join("model");
    StableDiffusion::load(name, &ModelSource::Folder(dir), &LoadOptions::cpu()).expect("loads")
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    crate::engine::kernels::max_abs_diff(a, b)
}

/// The parity tests' component tolerance: 1e-3 of the reference's largest magnitude.
fn assert_close(label: &str, ours: &Tensor, want: &Tensor) {
    assert_eq!(ours.dims(), want.dims(), "{label}");
    let limit = 1e-3 * max_diff(want, &want.zeros_like().unwrap());
    let err = max_diff(ours, want);
    assert!(
        err <= limit,
        "{label}: max error {err:.3e} over {limit:.3e}"
    );
}

#[test]
fn plain_prompts_with_embeddings_match_diffusers_load_textual_inversion() {
    let dir = fixtures().join("tiny-embeddings");
    let cases: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    let reference =
        candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu).unwrap();
    let library = EmbeddingLibrary::new(Some(dir.join("embeddings")));
    let mut checked = 0;
    for model_name in ["tiny-sd15", "tiny-sdxl"] {
        let model = load(model_name);
        // Only the embeddings of this model's widths: the other model's are skipped.
        let embeddings = library.for_model(&model.text_widths(), &[]).unwrap();
        assert!(!embeddings.is_empty());
        for case in cases["cases"].as_array().unwrap() {
            if case["model"] != model_name {
                continue;
            }
            let prompt = case["prompt"].as_str().unwrap();
            let cond = model
                .encode_prompt_with(prompt, 0, true, &embeddings)
                .unwrap();
            assert!(!cond.used.is_empty(), "{prompt:?} uses an embedding");
            let key = case["expected"].as_str().unwrap();
            assert_close(prompt, &cond.context, &reference[key]);
            if let Some(pooled) = case["expected_pooled"].as_str() {
                assert_close(prompt, cond.pooled.as_ref().unwrap(), &reference[pooled]);
            }
            // Without the embeddings the same text is different conditioning.
            let words = model.encode_prompt_with(prompt, 0, true, &[]).unwrap();
            assert!(
                max_diff(&words.context, &reference[key]) > 1e-3,
                "{prompt:?}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 7, "every case of cases.json");
}

/// An embedding named `name` whose vectors are the token embeddings of `word` in every encoder.
fn word_embedding(model: &StableDiffusion, name: &str, word: &str) -> Arc<Embedding> {
    let mut tensors = vec![model
        .text_encoder
        .token_vectors(&model.tokenizer.encode(word))
        .unwrap()];
    if let Some(s) = &model.text_encoder_2 {
        tensors.push(s.encoder.token_vectors(&s.tokenizer.encode(word)).unwrap());
    }
    Arc::new(Embedding::from_tensors(name, tensors).unwrap())
}

fn a1111(model: &StableDiffusion, prompt: &str, embeddings: &[Arc<Embedding>]) -> Conditioning {
    model
        .encode_prompt_with(prompt, 0, false, embeddings)
        .unwrap()
}

fn cats(n: usize) -> String {
    vec!["cat"; n].join(" ")
}

#[test]
fn an_embedding_of_a_words_own_vectors_paints_that_word() {
    for model in [load("tiny-sd15"), load("tiny-sdxl")] {
        // "moonflower" is two tokens, so this is a 2-vector embedding under a 2-token name.
        assert_eq!(model.tokenizer.encode("moonflower").len(), 2);
        let embs = vec![word_embedding(&model, "zqx-fly", "moonflower")];
        for (with, word) in [
            ("a zqx-fly over the pond", "a moonflower over the pond"),
            ("zqx-fly, zqx-fly", "moonflower, moonflower"),
            // Emphasis scales an embedding's vectors as it scales the word's tokens.
            ("a (zqx-fly:1.3) and [cat]", "a (moonflower:1.3) and [cat]"),
        ] {
            let ours = a1111(&model, with, &embs);
            let want = a1111(&model, word, &[]);
            assert_eq!(ours.used, [0], "{with:?}");
            assert!(max_diff(&ours.context, &want.context) < 1e-5, "{with:?}");
            if let (Some(a), Some(b)) = (&ours.pooled, &want.pooled) {
                assert!(max_diff(a, b) < 1e-5, "{with:?} pooled");
            }
        }
        // The emphasis really is applied (not the plain word).
        let plain = a1111(&model, "a moonflower and [cat]", &[]);
        let strong = a1111(&model, "a (zqx-fly:1.3) and [cat]", &embs);
        assert!(max_diff(&plain.context, &strong.context) > 1e-4);
        // A longer word that merely contains the name's text is just a word.
        let other = a1111(&model, "zqx-flying", &embs);
        assert!(other.used.is_empty());
    }
}

#[test]
fn an_embedding_moves_to_the_next_chunk_instead_of_straddling_token_75() {
    let model = load("tiny-sd15");
    let embs = vec![word_embedding(&model, "zqx-fly", "moonflower")];
    let words = EmbeddingWords::new(&model.tokenizer, [("zqx-fly", 2)]);
    // 74 tokens leave one place in the first chunk; the 2 vectors start the second.
    let prompt = format!("{} zqx-fly", cats(74));
    let chunks = tokenize_with_embeddings(&model.tokenizer, &prompt, &words);
    assert_eq!(chunks.chunks.len(), 2);
    assert!(chunks.chunks[0].fixes.is_empty());
    assert_eq!(chunks.chunks[0].ids[75], model.tokenizer.eos_id());
    let fix = chunks.chunks[1].fixes[0];
    assert_eq!((fix.offset, fix.len), (1, 2));
    let ours = a1111(&model, &prompt, &embs);
    let want = a1111(&model, &format!("{} BREAK moonflower", cats(74)), &[]);
    assert_eq!(ours.context.dims(), &[1, 154, 32]);
    assert!(max_diff(&ours.context, &want.context) < 1e-5);
    // With 73 tokens before it, it fits at positions 74 and 75 of the first chunk.
    let fits = format!("{} zqx-fly", cats(73));
    let ours = a1111(&model, &fits, &embs);
    let want = a1111(&model, &format!("{} moonflower", cats(73)), &[]);
    assert_eq!(ours.context.dims(), &[1, 77, 32]);
    assert!(max_diff(&ours.context, &want.context) < 1e-5);
}

#[test]
fn words_after_a_comma_move_to_the_next_chunk_with_their_embedding() {
    let model = load("tiny-sd15");
    let embs = vec![word_embedding(&model, "zqx-fly", "moonflower")];
    // 60 cats, a comma, the embedding among words: the chunk fills inside the last phrase, so
    // the phrase (embedding included) moves to the second chunk.
    let tail = format!("red zqx-fly {}", cats(12));
    let ours = a1111(&model, &format!("{} , {tail}", cats(60)), &embs);
    let want = a1111(
        &model,
        &format!("{} , {}", cats(60), tail.replace("zqx-fly", "moonflower")),
        &[],
    );
    assert_eq!(ours.context.dims(), &[1, 154, 32]);
    assert_eq!(ours.used, [0]);
    assert!(max_diff(&ours.context, &want.context) < 1e-5);
}

#[test]
fn a_negative_prompt_embedding_is_encoded_and_reported() {
    let model = load("tiny-sd15");
    let embs = vec![
        word_embedding(&model, "zqx-fly", "moonflower"),
        word_embedding(&model, "zqx-blur", "blurry"),
    ];
    let (neg, pos) = model
        .encode_pair_with("zqx-blur, lowres", "a zqx-fly", 0, false, &embs)
        .unwrap();
    let (want_neg, want_pos) = model
        .encode_pair_with("blurry, lowres", "a moonflower", 0, false, &[])
        .unwrap();
    assert_eq!(
        (neg.used.as_slice(), pos.used.as_slice()),
        (&[1][..], &[0][..])
    );
    assert!(max_diff(&neg.context, &want_neg.context) < 1e-5);
    assert!(max_diff(&pos.context, &want_pos.context) < 1e-5);
    // Without the embeddings the names are plain words and encode differently.
    let (words, _) = model
        .encode_pair_with("zqx-blur, lowres", "a zqx-fly", 0, false, &[])
        .unwrap();
    assert!(words.used.is_empty());
    assert!(max_diff(&words.context, &neg.context) > 1e-4);
}
