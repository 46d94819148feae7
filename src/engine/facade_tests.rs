//! The facade on the tiny fixture model: latent previews arrive every n steps at the latent
//! size, and the engine thread logs inside the caller's span.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::{
    CancelToken, Defaults, Engine, EngineConfig, GenerationRequest, ModelSource, ModelSpec,
    Progress,
};

/// The engine tests of this binary run one at a time: tracing caches whether a log line has a
/// subscriber when the line first runs, so an engine thread of another test logging before the
/// capturing subscriber exists could hide the lines under test.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn tiny() -> Engine {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-sd15/model");
    let engine = Engine::spawn(EngineConfig::cpu(ModelSpec {
        name: "tiny".into(),
        source: ModelSource::Folder(model),
        defaults: Defaults {
            steps: 5,
            width: 64,
            height: 96,
            ..Defaults::default()
        },
        schedule: Default::default(),
        vae: None,
    }))
    .expect("the tiny engine starts");
    engine.wait_ready().expect("the tiny model loads");
    engine
}

fn request(preview_every: Option<usize>) -> GenerationRequest {
    GenerationRequest {
        prompt: "a gnome bard".into(),
        seed: Some(3),
        preview_every,
        ..Default::default()
    }
}

fn previews(engine: &Engine, req: GenerationRequest) -> Vec<(usize, Option<(u32, u32)>)> {
    let valid = req.validate(&engine.defaults(None).unwrap()).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    engine
        .generate(
            valid,
            move |p: Progress| {
                let size = p.preview.as_ref().map(|i| i.dimensions());
                s.lock().unwrap().push((p.step, size));
            },
            CancelToken::new(),
        )
        .unwrap();
    let out = seen.lock().unwrap().clone();
    out
}

#[test]
fn a_preview_arrives_every_n_steps_at_the_latent_size() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let engine = tiny();
    let seen = previews(&engine, request(Some(2)));
    // 64x96 pixels are 8x12 latent cells.
    let want: Vec<_> = (1..=5)
        .map(|step| (step, (step % 2 == 0).then_some((8, 12))))
        .collect();
    assert_eq!(seen, want);
    let none = previews(&engine, request(None));
    assert_eq!(none.len(), 5);
    assert!(none.iter().all(|(_, p)| p.is_none()));
}

/// Collects what a fmt subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn engine_log_lines_name_the_callers_span() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let engine = tiny();
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_thread_names(true)
        .with_ansi(false)
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        let span = tracing::info_span!("job", id = "job-42");
        let _entered = span.enter();
        let valid = request(None)
            .validate(&engine.defaults(None).unwrap())
            .unwrap();
        engine.generate(valid, |_| {}, CancelToken::new()).unwrap();
    });
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("painting"))
        .unwrap_or_else(|| panic!("no engine line in:\n{text}"));
    assert!(line.contains("limner-engine"), "{line}");
    assert!(line.contains("job{id=\"job-42\"}"), "{line}");
    assert!(
        text.lines()
            .any(|l| l.contains("painted") && l.contains("job-42")),
        "{text}"
    );
}
