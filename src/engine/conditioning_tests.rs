//! SDXL conditioning on the tiny SDXL fixture: A1111's chunks and emphasis on both encoders, the
//! pooled output from the first chunk, and the empty negative prompt as zeros.

use candle_core::Tensor;

use crate::engine::loading::model::{LoadOptions, ModelSource, StableDiffusion};

fn tiny_sdxl() -> StableDiffusion {
    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/tiny-sdxl/model"
    );
    StableDiffusion::load(
        "tiny-sdxl",
        &ModelSource::Folder(dir.into()),
        &LoadOptions::cpu(),
    )
    .expect("tiny SDXL loads")
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    crate::engine::kernels::max_abs_diff(a, b)
}

fn abs_max(t: &Tensor) -> f32 {
    max_diff(t, &t.zeros_like().unwrap())
}

#[test]
fn a1111_prompts_match_diffusers_when_they_use_no_syntax() {
    let m = tiny_sdxl();
    let prompt = "Garrick, determined, male, Human, adult, Fighter";
    let a1111 = m.encode_prompt(prompt, 0, false).unwrap();
    let plain = m.encode_plain(prompt, 0).unwrap();
    assert_eq!(a1111.context.dims(), &[1, 77, 18]);
    assert!(max_diff(&a1111.context, &plain.context) < 1e-6);
    assert!(
        max_diff(
            a1111.pooled.as_ref().unwrap(),
            plain.pooled.as_ref().unwrap()
        ) < 1e-6
    );
}

#[test]
fn chunks_concatenate_and_the_pooled_output_is_the_first_chunks() {
    let m = tiny_sdxl();
    let two = m
        .encode_prompt("a dwarf cleric BREAK red cloak, snowy mountains", 0, false)
        .unwrap();
    let first = m.encode_prompt("a dwarf cleric", 0, false).unwrap();
    assert_eq!(two.context.dims(), &[1, 154, 18]);
    assert!(max_diff(&two.context.narrow(1, 0, 77).unwrap(), &first.context) < 1e-6);
    assert!(max_diff(two.pooled.as_ref().unwrap(), first.pooled.as_ref().unwrap()) < 1e-6);
    let second = m
        .encode_prompt("red cloak, snowy mountains", 0, false)
        .unwrap();
    assert!(
        max_diff(
            two.pooled.as_ref().unwrap(),
            second.pooled.as_ref().unwrap()
        ) > 1e-4
    );
}

#[test]
fn emphasis_weights_the_context_of_both_encoders_but_not_the_pooled_output() {
    let m = tiny_sdxl();
    let plain = m.encode_prompt("red cloak", 0, false).unwrap();
    let strong = m.encode_prompt("(red:1.5) cloak", 0, false).unwrap();
    // Columns 0..8 are CLIP-L's, 8..18 OpenCLIP-G's: each encoder's half moves.
    for (start, len) in [(0, 8), (8, 10)] {
        let a = plain.context.narrow(2, start, len).unwrap();
        let b = strong.context.narrow(2, start, len).unwrap();
        assert!(max_diff(&a, &b) > 1e-4, "columns {start}..{}", start + len);
    }
    assert!(
        max_diff(
            plain.pooled.as_ref().unwrap(),
            strong.pooled.as_ref().unwrap()
        ) < 1e-6
    );
}

#[test]
fn an_empty_negative_prompt_is_zeros_and_a_real_one_is_not() {
    let m = tiny_sdxl();
    assert!(m.force_zeros_for_empty_prompt);
    let long = "a dwarf cleric BREAK red cloak";
    let (neg, pos) = m.encode_pair("", long, 0, false).unwrap();
    assert_eq!(neg.context.dims(), pos.context.dims());
    assert_eq!(abs_max(&neg.context), 0.0);
    assert_eq!(abs_max(neg.pooled.as_ref().unwrap()), 0.0);
    let (neg, _) = m.encode_pair("blurry", long, 0, false).unwrap();
    assert_eq!(neg.context.dims(), &[1, 154, 18]);
    assert!(abs_max(&neg.context) > 0.0);
    assert!(abs_max(neg.pooled.as_ref().unwrap()) > 0.0);
}

#[test]
fn clip_skip_moves_the_context_but_not_the_pooled_output() {
    let m = tiny_sdxl();
    let base = m.encode_prompt("red cloak", 0, false).unwrap();
    let skipped = m.encode_prompt("red cloak", 1, false).unwrap();
    assert!(max_diff(&base.context, &skipped.context) > 1e-4);
    assert!(
        max_diff(
            base.pooled.as_ref().unwrap(),
            skipped.pooled.as_ref().unwrap()
        ) < 1e-6
    );
}
