//! Parity with diffusers on the reference fixtures: `tests/fixtures/tiny-sd15`, `tiny-sd15-fewstep`, `tiny-sdxl` and
//! `tiny-sdxl-vpred` (or the fixture in `LIMNER_PARITY_FIXTURE`, SD or SDXL), every case from
//! the diffusers folder and from each `single-file/*.safetensors`, within the contract's
//! tolerances (components 1e-3 relative; pipelines 2e-2 max / 2e-3 mean on the image). The
//! checks live in `limner::engine::parity`, beside the engine internals they drive.

#[test]
fn tokenizer_ids_match_reference() {
    limner::engine::parity::tokenizer_ids_match_reference();
}

#[test]
fn every_case_matches_diffusers_for_every_model_source() {
    limner::engine::parity::every_case_matches_diffusers_for_every_model_source();
}
