//! The portrait service end to end: a real SQLite store (in memory), a real image folder (a temp
//! dir), and the fake backend (fast) or the real engine on the tiny fixture model.

#[path = "common/tiny_engine.rs"]
mod tiny_engine;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use limner::characters::{
    Campaign, CampaignFilter, CampaignInvite, CampaignStatePatch, CharacterFilter, CharacterInfo,
    CharacterPatch, CharacterProfile, CharacterStore, EnrichedCharacter, NewCampaign, NewCharacter,
    NewInvite, NewPortrait, Page, PortraitRecord, SqliteStore, StoreError, StoreResult, Viewer,
};
use limner::engine::CancelToken;
use limner::engine::Defaults;
use limner::engine::{decode_image, read_parameters};
use limner::portraits::{
    FakeBackend, GenerateOptions, ImageBackend, LocalImageStore, PortraitError, PortraitService,
    PortraitTemplates, StyleModels,
};

fn prompts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("prompts")
}

fn small() -> Defaults {
    Defaults {
        steps: 6,
        width: 64,
        height: 96,
        ..Defaults::default()
    }
}

fn garrick() -> NewCharacter {
    NewCharacter {
        name: "Garrick".into(),
        race: Some("Human".into()),
        character_class: Some("Fighter".into()),
        gender: Some("Male".into()),
        age_category: Some("Adult".into()),
        facial_expression: Some("Determined".into()),
        attire: Some("steel breastplate".into()),
        primary_weapon: Some("longsword".into()),
        ..Default::default()
    }
}

struct Fixture {
    service: PortraitService,
    store: Arc<SqliteStore>,
    backend: Arc<FakeBackend>,
    media: PathBuf,
    character: String,
    _dir: tempfile::TempDir,
}

impl Fixture {
    /// The fixture character as the API hands it to the service (read once, access checked).
    fn profile(&self) -> CharacterProfile {
        self.store.get_character(&self.character).unwrap()
    }
}

fn fixture_with(backend: FakeBackend, styles: StyleModels) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let media = dir.path().join("media");
    let store = Arc::new(SqliteStore::open_in_memory().unwrap());
    let backend = Arc::new(backend);
    let character = store.create_character(&garrick()).unwrap().id;
    let service = PortraitService::new(
        store.clone(),
        Arc::new(LocalImageStore::new(&media)),
        backend.clone(),
        PortraitTemplates::load_dir(&prompts_dir()).unwrap(),
        styles,
    );
    Fixture {
        service,
        store,
        backend,
        media,
        character,
        _dir: dir,
    }
}

fn fixture() -> Fixture {
    fixture_with(
        FakeBackend::new().with_defaults(small()),
        StyleModels::new(),
    )
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

fn quiet() -> Box<dyn FnMut(limner::engine::Progress) + Send> {
    Box::new(|_| {})
}

#[test]
fn generate_records_a_current_portrait_with_files() {
    let f = fixture();
    let prepared = f
        .service
        .prepare_generate(&f.profile(), GenerateOptions::default())
        .unwrap();
    assert!(
        prepared.prompt().contains("Garrick"),
        "{}",
        prepared.prompt()
    );
    assert!(prepared.prompt().contains("wearing steel breastplate"));
    assert!(prepared.prompt().contains("detailed face"));
    assert!(prepared.negative_prompt().contains("watermark"));
    assert_eq!(prepared.art_style(), "default");
    assert_eq!(prepared.model(), "fake-model");
    // The regeneration guide: hires fix on, denoise 0.4: 6 steps + floor(6 * 0.4) second-pass steps.
    assert_eq!(prepared.expected_steps(), 8);

    let steps = Arc::new(AtomicUsize::new(0));
    let s = steps.clone();
    let out = f
        .service
        .run(
            prepared,
            Box::new(move |_| {
                s.fetch_add(1, Ordering::SeqCst);
            }),
            &CancelToken::new(),
        )
        .unwrap();
    assert_eq!(steps.load(Ordering::SeqCst), 8);
    assert_eq!(out.method, "txt2img");
    assert!(out.previous.is_none());
    assert!(out.record.is_current);
    let profile = f.store.get_character(&f.character).unwrap();
    assert_eq!(
        profile.current_portrait_id.as_deref(),
        Some(out.record.id.as_str())
    );

    let bytes = std::fs::read(f.media.join(&out.record.file_path)).unwrap();
    let img = decode_image(&bytes).unwrap();
    assert_eq!(img.dimensions(), (128, 192), "hires x2 of 64x96");
    let info = read_parameters(&bytes).unwrap();
    assert!(info.starts_with(&out.prompt_used), "{info}");
    assert!(info.contains(&format!("Seed: {}", out.seed)), "{info}");
    let thumb_key = out.record.thumbnail_path.clone().unwrap();
    let thumb = decode_image(&std::fs::read(f.media.join(&thumb_key)).unwrap()).unwrap();
    assert!(thumb.width().max(thumb.height()) <= 256);
    assert_eq!(f.service.image_bytes(&out.record.file_path).unwrap(), bytes);

    let p = &out.record.parameters;
    assert_eq!(p["sampler"], "Euler a");
    assert_eq!(p["steps"], 6);
    assert_eq!(p["cfg_scale"], 8.0);
    assert_eq!(p["hires"], true);
    assert_eq!(p["hr_denoising_strength"], 0.4);
    assert_eq!(p["hr_upscaler"], "Latent");
    assert_eq!(p["seed"], out.seed);
    assert_eq!(out.record.seed, Some(out.seed));
    assert_eq!(out.record.model.as_deref(), Some("fake-model"));
}

#[test]
fn request_overrides_win_over_defaults() {
    let f = fixture();
    let opts = GenerateOptions {
        art_style: Some("Fantasy".into()),
        custom_prompt_additions: Some("torchlight".into()),
        steps: Some(3),
        cfg_scale: Some(5.5),
        sampler: Some("DPM++ 2M".into()),
        seed: Some(42),
        width: Some(128),
        height: Some(64),
        hires: Some(false),
        ..Default::default()
    };
    let prepared = f.service.prepare_generate(&f.profile(), opts).unwrap();
    assert_eq!(prepared.seed(), 42);
    assert_eq!(prepared.art_style(), "fantasy");
    let prompt = prepared.prompt();
    let (name, extra) = (
        prompt.find("Garrick").unwrap(),
        prompt.find("torchlight").unwrap(),
    );
    assert!(
        name < extra,
        "custom additions come after the profile: {prompt}"
    );
    assert!(prompt.contains("fantasy art"), "{prompt}");
    let out = f
        .service
        .run(prepared, quiet(), &CancelToken::new())
        .unwrap();
    let job = f.backend.last_request().unwrap();
    assert_eq!((job.steps(), job.width(), job.height()), (3, 128, 64));
    assert_eq!(job.cfg_scale(), 5.5);
    assert_eq!(job.sampler_name(), "DPM++ 2M");
    assert!(job.hires().is_none());
    assert_eq!(out.seed, 42);
    assert_eq!(out.parameters["hires"], false);
}

#[test]
fn style_picks_the_model_and_its_hires_preference() {
    let backend = FakeBackend::new()
        .with_defaults(small())
        .with_model("photo-model", small());
    let styles = StyleModels::new()
        .with_style("realistic", "photo-model")
        .with_hires_fix("photo-model", false)
        .with_style("anime", "not-loaded-model");
    let f = fixture_with(backend, styles);
    let opts = |style: &str| GenerateOptions {
        art_style: Some(style.into()),
        ..Default::default()
    };
    let p = f
        .service
        .prepare_generate(&f.profile(), opts("realistic"))
        .unwrap();
    assert_eq!(p.model(), "photo-model");
    assert!(p.request().hires().is_none());
    // A style whose model the engine does not have falls back to the default model.
    let p = f
        .service
        .prepare_generate(&f.profile(), opts("anime"))
        .unwrap();
    assert_eq!(p.model(), "fake-model");

    let e = f
        .service
        .prepare_generate(&f.profile(), opts("vaporwave"))
        .unwrap_err();
    assert_eq!(e.field(), Some("art_style"));
    assert!(
        e.to_string().contains("cartoon") && e.to_string().contains("realistic"),
        "{e}"
    );
    let e = f
        .service
        .prepare_generate(
            &f.profile(),
            GenerateOptions {
                model: Some("nope".into()),
                ..Default::default()
            },
        )
        .unwrap_err();
    assert_eq!(e.field(), Some("model"));
    assert!(e.to_string().contains("photo-model"), "{e}");
    for (opts, field) in [
        (
            GenerateOptions {
                steps: Some(0),
                ..Default::default()
            },
            "steps",
        ),
        (
            GenerateOptions {
                width: Some(100),
                ..Default::default()
            },
            "width",
        ),
        (
            GenerateOptions {
                custom_prompt_additions: Some("x".repeat(5000)),
                ..Default::default()
            },
            "custom_prompt_additions",
        ),
    ] {
        let e = f.service.prepare_generate(&f.profile(), opts).unwrap_err();
        assert_eq!(e.field(), Some(field), "{e}");
        assert!(e.is_client_error());
    }
    let e = f
        .service
        .prepare_generate(
            &f.profile(),
            GenerateOptions {
                sampler: Some("Bogus".into()),
                ..Default::default()
            },
        )
        .unwrap_err();
    assert_eq!(e.field(), Some("sampler"));
    assert!(e.is_client_error());
    assert_eq!(f.backend.calls(), 0, "nothing ran for refused requests");
}

#[test]
fn regenerate_is_img2img_from_the_current_portrait_and_keeps_it() {
    let f = fixture();
    let first = f
        .service
        .prepare_generate(
            &f.profile(),
            GenerateOptions {
                art_style: Some("anime".into()),
                ..Default::default()
            },
        )
        .and_then(|p| f.service.run(p, quiet(), &CancelToken::new()))
        .unwrap();
    let first_bytes = f.service.image_bytes(&first.record.file_path).unwrap();
    let first_pixels = decode_image(&first_bytes).unwrap();

    let prepared = f
        .service
        .prepare_regenerate(
            &f.profile(),
            "same character but wearing a red cloak",
            Some(0.35),
            GenerateOptions::default(),
        )
        .unwrap();
    assert_eq!(prepared.denoising_strength(), Some(0.35));
    assert_eq!(
        prepared.art_style(),
        "anime",
        "inherits the portrait's style"
    );
    assert_eq!(
        prepared.source_portrait().map(|p| p.id.as_str()),
        Some(first.record.id.as_str())
    );
    let out = f
        .service
        .run(prepared, quiet(), &CancelToken::new())
        .unwrap();

    let sent = f.backend.last_request().unwrap();
    let init = sent.init_image().cloned().expect("an init image");
    assert_eq!(
        init, first_pixels,
        "starts from the current portrait's pixels"
    );
    assert_eq!(sent.denoising_strength(), Some(0.35));
    assert!(sent.hires().is_none());
    assert_eq!(
        (sent.width(), sent.height()),
        (128, 192),
        "same size as the portrait"
    );
    assert!(sent.prompt().contains("red cloak") && sent.prompt().contains("Garrick"));

    assert_eq!(out.method, "img2img_consistency");
    assert_eq!(out.previous.as_ref().map(|p| &p.id), Some(&first.record.id));
    assert_eq!(
        out.record.parent_portrait_id.as_ref(),
        Some(&first.record.id)
    );
    assert_eq!(out.parameters["denoising_strength"], 0.35);
    let history = f.store.portrait_history(&f.character).unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!(history.iter().filter(|p| p.is_current).count(), 1);
    assert!(history
        .iter()
        .any(|p| p.id == out.record.id && p.is_current));
    assert_eq!(
        f.service.image_bytes(&first.record.file_path).unwrap(),
        first_bytes
    );

    let p = f
        .service
        .prepare_regenerate(
            &f.profile(),
            "same character, smiling",
            None,
            GenerateOptions::default(),
        )
        .unwrap();
    assert_eq!(
        p.denoising_strength(),
        Some(0.2),
        "the regeneration guide's default"
    );
    assert_eq!(p.source_portrait().map(|s| &s.id), Some(&out.record.id));
}

#[test]
fn regenerate_refuses_bad_input_and_missing_portraits() {
    let f = fixture();
    let e = f
        .service
        .prepare_regenerate(
            &f.profile(),
            "same character but older",
            None,
            GenerateOptions::default(),
        )
        .unwrap_err();
    assert!(matches!(e, PortraitError::Conflict(_)), "{e}");
    assert!(e.is_client_error());
    f.service
        .prepare_generate(&f.profile(), GenerateOptions::default())
        .and_then(|p| f.service.run(p, quiet(), &CancelToken::new()))
        .unwrap();
    for strength in [0.05, 0.95, f64::NAN, -1.0] {
        let e = f
            .service
            .prepare_regenerate(
                &f.profile(),
                "x",
                Some(strength),
                GenerateOptions::default(),
            )
            .unwrap_err();
        assert_eq!(e.field(), Some("denoisingStrength"), "{e}");
        assert!(
            e.to_string().contains("0.1") && e.to_string().contains("0.9"),
            "{e}"
        );
    }
    let e = f
        .service
        .prepare_regenerate(&f.profile(), "  ", None, GenerateOptions::default())
        .unwrap_err();
    assert_eq!(e.field(), Some("newPrompt"));
    // 0.1 of 6 steps leaves no step to run: refused before queueing, under the API's name.
    let e = f
        .service
        .prepare_regenerate(&f.profile(), "x", Some(0.1), GenerateOptions::default())
        .unwrap_err();
    assert_eq!(e.field(), Some("denoisingStrength"), "{e}");
}

#[test]
fn a_failing_backend_leaves_no_files_and_no_records() {
    let f = fixture_with(
        FakeBackend::new()
            .with_defaults(small())
            .with_failure("out of memory"),
        StyleModels::new(),
    );
    let p = f
        .service
        .prepare_generate(&f.profile(), GenerateOptions::default())
        .unwrap();
    let e = f.service.run(p, quiet(), &CancelToken::new()).unwrap_err();
    assert!(matches!(e, PortraitError::Engine(_)), "{e}");
    assert!(!e.is_client_error());
    assert!(files_under(&f.media).is_empty());
    assert!(f.store.portrait_history(&f.character).unwrap().is_empty());
    assert!(f
        .store
        .get_character(&f.character)
        .unwrap()
        .current_portrait_id
        .is_none());
}

#[test]
fn cancellation_returns_cancelled_and_writes_nothing() {
    let f = fixture_with(
        FakeBackend::new()
            .with_defaults(small())
            .with_step_delay(Duration::from_millis(1)),
        StyleModels::new(),
    );
    let cancel = CancelToken::new();
    let c = cancel.clone();
    let seen = Arc::new(AtomicUsize::new(0));
    let s = seen.clone();
    let p = f
        .service
        .prepare_generate(&f.profile(), GenerateOptions::default())
        .unwrap();
    let e = f
        .service
        .run(
            p,
            Box::new(move |pr| {
                s.store(pr.step, Ordering::SeqCst);
                if pr.step == 2 {
                    c.cancel();
                }
            }),
            &cancel,
        )
        .unwrap_err();
    assert!(matches!(e, PortraitError::Cancelled), "{e}");
    assert_eq!(seen.load(Ordering::SeqCst), 2, "stopped within one step");
    // Already cancelled: the backend is not even called.
    let calls = f.backend.calls();
    let p = f
        .service
        .prepare_generate(&f.profile(), GenerateOptions::default())
        .unwrap();
    assert!(matches!(
        f.service.run(p, quiet(), &cancel),
        Err(PortraitError::Cancelled)
    ));
    assert_eq!(f.backend.calls(), calls);
    assert!(files_under(&f.media).is_empty());
    assert!(f.store.portrait_history(&f.character).unwrap().is_empty());
}

#[test]
fn concurrent_runs_of_one_character_keep_history_consistent() {
    let f = fixture_with(
        FakeBackend::new()
            .with_defaults(small())
            .with_step_delay(Duration::from_millis(1)),
        StyleModels::new(),
    );
    const N: usize = 8;
    let outcomes: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..N)
            .map(|_| {
                let service = f.service.clone();
                let profile = f.profile();
                scope.spawn(move || {
                    let p = service.prepare_generate(&profile, GenerateOptions::default())?;
                    service.run(p, quiet(), &CancelToken::new())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap().unwrap())
            .collect()
    });
    assert_eq!(f.backend.calls(), N, "no job ran twice");
    let history = f.store.portrait_history(&f.character).unwrap();
    assert_eq!(history.len(), N);
    let current: Vec<_> = history.iter().filter(|p| p.is_current).collect();
    assert_eq!(current.len(), 1);
    let profile = f.store.get_character(&f.character).unwrap();
    assert_eq!(profile.current_portrait_id.as_ref(), Some(&current[0].id));
    // Writes were serialised: each run saw the one before it as "previous", so the previous
    // links form one chain: every portrait but the current one is someone's previous, once.
    let previous: Vec<Option<String>> = outcomes
        .iter()
        .map(|o| o.previous.as_ref().map(|p| p.id.clone()))
        .collect();
    assert_eq!(previous.iter().filter(|p| p.is_none()).count(), 1);
    let linked: HashSet<_> = previous.iter().flatten().cloned().collect();
    assert_eq!(linked.len(), N - 1);
    let expected: HashSet<_> = history
        .iter()
        .filter(|p| !p.is_current)
        .map(|p| p.id.clone())
        .collect();
    assert_eq!(linked, expected);
    assert_eq!(files_under(&f.media).len(), 2 * N);
}

/// A store whose `add_portrait` always fails (the database is "full"); everything else works.
struct FailingRecords(SqliteStore);

impl CharacterStore for FailingRecords {
    fn create_character(&self, new: &NewCharacter) -> StoreResult<CharacterProfile> {
        self.0.create_character(new)
    }
    fn import_character(&self, k: &str, n: &NewCharacter) -> StoreResult<(CharacterProfile, bool)> {
        self.0.import_character(k, n)
    }
    fn get_character(&self, id: &str) -> StoreResult<CharacterProfile> {
        self.0.get_character(id)
    }
    fn find_by_import_key(&self, k: &str) -> StoreResult<Option<CharacterProfile>> {
        self.0.find_by_import_key(k)
    }
    fn list_characters(&self, f: &CharacterFilter) -> StoreResult<Vec<CharacterProfile>> {
        self.0.list_characters(f)
    }
    fn character_page(&self, f: &CharacterFilter) -> StoreResult<Page<EnrichedCharacter>> {
        self.0.character_page(f)
    }
    fn visible_character(&self, v: &Viewer, id: &str) -> StoreResult<CharacterProfile> {
        self.0.visible_character(v, id)
    }
    fn update_character(&self, id: &str, p: &CharacterPatch) -> StoreResult<CharacterProfile> {
        self.0.update_character(id, p)
    }
    fn delete_character(&self, id: &str) -> StoreResult<Vec<String>> {
        self.0.delete_character(id)
    }
    fn create_campaign(&self, n: &NewCampaign) -> StoreResult<Campaign> {
        self.0.create_campaign(n)
    }
    fn get_campaign(&self, id: &str) -> StoreResult<Campaign> {
        self.0.get_campaign(id)
    }
    fn list_campaigns(&self, f: &CampaignFilter) -> StoreResult<Vec<Campaign>> {
        self.0.list_campaigns(f)
    }
    fn campaign_page(&self, f: &CampaignFilter) -> StoreResult<Page<Campaign>> {
        self.0.campaign_page(f)
    }
    fn visible_campaign(&self, v: &Viewer, id: &str) -> StoreResult<Campaign> {
        self.0.visible_campaign(v, id)
    }
    fn delete_campaign(&self, id: &str) -> StoreResult<()> {
        self.0.delete_campaign(id)
    }
    fn join_campaign(
        &self,
        c: &str,
        ch: &str,
        s: &CampaignStatePatch,
    ) -> StoreResult<CharacterInfo> {
        self.0.join_campaign(c, ch, s)
    }
    fn leave_campaign(&self, c: &str, ch: &str) -> StoreResult<()> {
        self.0.leave_campaign(c, ch)
    }
    fn create_invite(
        &self,
        c: &str,
        by: Option<&str>,
        n: &NewInvite,
    ) -> StoreResult<CampaignInvite> {
        self.0.create_invite(c, by, n)
    }
    fn list_invites(&self, c: &str) -> StoreResult<Vec<CampaignInvite>> {
        self.0.list_invites(c)
    }
    fn revoke_invite(&self, c: &str, code: &str) -> StoreResult<()> {
        self.0.revoke_invite(c, code)
    }
    fn find_invite(&self, code: &str) -> StoreResult<CampaignInvite> {
        self.0.find_invite(code)
    }
    fn redeem_invite(&self, code: &str, ch: &str) -> StoreResult<CharacterInfo> {
        self.0.redeem_invite(code, ch)
    }
    fn campaign_state(&self, c: &str, ch: &str) -> StoreResult<CharacterInfo> {
        self.0.campaign_state(c, ch)
    }
    fn update_campaign_state(
        &self,
        c: &str,
        ch: &str,
        p: &CampaignStatePatch,
    ) -> StoreResult<CharacterInfo> {
        self.0.update_campaign_state(c, ch, p)
    }
    fn enriched_character(&self, id: &str, c: Option<&str>) -> StoreResult<EnrichedCharacter> {
        self.0.enriched_character(id, c)
    }
    fn campaign_roster(&self, c: &str) -> StoreResult<Vec<EnrichedCharacter>> {
        self.0.campaign_roster(c)
    }
    fn add_portrait(&self, _: &NewPortrait, _: bool) -> StoreResult<PortraitRecord> {
        Err(StoreError::Database("disk full".into()))
    }
    fn get_portrait(&self, id: &str) -> StoreResult<PortraitRecord> {
        self.0.get_portrait(id)
    }
    fn portrait_history(&self, id: &str) -> StoreResult<Vec<PortraitRecord>> {
        self.0.portrait_history(id)
    }
    fn set_current_portrait(&self, c: &str, p: &str) -> StoreResult<CharacterProfile> {
        self.0.set_current_portrait(c, p)
    }
    fn backup_to(&self, dest: &Path) -> StoreResult<()> {
        self.0.backup_to(dest)
    }
}

#[test]
fn a_failed_record_removes_the_written_files() {
    let dir = tempfile::tempdir().unwrap();
    let media = dir.path().join("media");
    let store = Arc::new(FailingRecords(SqliteStore::open_in_memory().unwrap()));
    let profile = store.create_character(&garrick()).unwrap();
    let backend = Arc::new(FakeBackend::new().with_defaults(small()));
    let service = PortraitService::new(
        store.clone(),
        Arc::new(LocalImageStore::new(&media)),
        backend.clone(),
        PortraitTemplates::load_dir(&prompts_dir()).unwrap(),
        StyleModels::new(),
    );
    let p = service
        .prepare_generate(&profile, GenerateOptions::default())
        .unwrap();
    let e = service.run(p, quiet(), &CancelToken::new()).unwrap_err();
    assert!(matches!(e, PortraitError::Storage(_)), "{e}");
    assert_eq!(backend.completed(), 1, "the image was painted");
    assert!(files_under(&media).is_empty(), "{:?}", files_under(&media));
}

#[test]
fn deleting_a_character_removes_its_files_only() {
    let f = fixture();
    let out = f
        .service
        .prepare_generate(&f.profile(), GenerateOptions::default())
        .and_then(|p| f.service.run(p, quiet(), &CancelToken::new()))
        .unwrap();
    let other = f.store.create_character(&garrick()).unwrap();
    let kept = f
        .service
        .prepare_generate(&other, GenerateOptions::default())
        .and_then(|p| f.service.run(p, quiet(), &CancelToken::new()))
        .unwrap();
    let mut paths = f.store.delete_character(&f.character).unwrap();
    assert!(paths.contains(&out.record.file_path));
    paths.push("/etc/passwd".into());
    f.service.delete_character_files(&paths).unwrap();
    assert!(!f.media.join(&out.record.file_path).exists());
    assert!(f.media.join(&kept.record.file_path).exists());
    assert!(Path::new("/etc/passwd").exists());
    assert!(matches!(
        f.service.image_bytes(&out.record.file_path),
        Err(PortraitError::NotFound(_))
    ));
}

#[test]
fn real_engine_on_the_tiny_model() {
    let engine = tiny_engine::tiny_engine();
    assert_eq!(ImageBackend::default_model(&engine), "tiny");
    let dir = tempfile::tempdir().unwrap();
    let media = dir.path().join("media");
    let store = Arc::new(SqliteStore::open_in_memory().unwrap());
    let id = store.create_character(&garrick()).unwrap().id;
    let service = PortraitService::new(
        store.clone(),
        Arc::new(LocalImageStore::new(&media)),
        Arc::new(engine),
        PortraitTemplates::load_dir(&prompts_dir()).unwrap(),
        StyleModels::new().with_style("fantasy", "tiny"),
    );
    let steps = Arc::new(AtomicUsize::new(0));
    let s = steps.clone();
    let first = service
        .prepare_generate(
            &store.get_character(&id).unwrap(),
            GenerateOptions {
                art_style: Some("fantasy".into()),
                hires: Some(false),
                seed: Some(7),
                ..Default::default()
            },
        )
        .and_then(|p| {
            service.run(
                p,
                Box::new(move |_| {
                    s.fetch_add(1, Ordering::SeqCst);
                }),
                &CancelToken::new(),
            )
        })
        .unwrap();
    assert_eq!(steps.load(Ordering::SeqCst), 4);
    assert_eq!(first.model, "tiny");
    let bytes = service.image_bytes(&first.record.file_path).unwrap();
    assert_eq!(decode_image(&bytes).unwrap().dimensions(), (64, 64));
    let info = read_parameters(&bytes).unwrap();
    assert!(
        info.contains("Garrick") && info.contains("Seed: 7"),
        "{info}"
    );

    let second = service
        .prepare_regenerate(
            &store.get_character(&id).unwrap(),
            "same character but wearing a red cloak",
            Some(0.5),
            GenerateOptions::default(),
        )
        .and_then(|p| service.run(p, quiet(), &CancelToken::new()))
        .unwrap();
    let bytes2 = service.image_bytes(&second.record.file_path).unwrap();
    assert_eq!(decode_image(&bytes2).unwrap().dimensions(), (64, 64));
    assert_ne!(bytes, bytes2);
    assert!(read_parameters(&bytes2)
        .unwrap()
        .contains("Denoising strength: 0.5"));
    let history = store.portrait_history(&id).unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!(second.previous.map(|p| p.id), Some(first.record.id));
}
