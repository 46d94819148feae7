use super::*;

use std::collections::HashMap;

fn save(dir: &Path, name: &str, tensors: &[(&str, Tensor)]) -> PathBuf {
    let path = dir.join(format!("{name}.safetensors"));
    let map: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(k, t)| (k.to_string(), t.clone()))
        .collect();
    candle_core::safetensors::save(&map, &path).unwrap();
    path
}

fn t(rows: usize, cols: usize, seed: f32) -> Tensor {
    let v: Vec<f32> = (0..rows * cols).map(|i| seed + i as f32 * 0.25).collect();
    Tensor::from_vec(v, (rows, cols), &Device::Cpu).unwrap()
}

fn file(path: &Path) -> NetworkFile {
    NetworkFile {
        name: path.file_stem().unwrap().to_str().unwrap().to_string(),
        path: path.to_path_buf(),
    }
}

#[test]
fn every_a1111_layout_loads_and_half_precision_becomes_f32() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let a = save(d, "a", &[("emb_params", t(2, 8, 1.0))]);
    let b = save(
        d,
        "b",
        &[(
            "string_to_param.*",
            t(3, 8, 2.0).to_dtype(DType::F16).unwrap(),
        )],
    );
    let c = save(
        d,
        "c",
        &[(
            "*",
            Tensor::new(&[0.5f32, 1.5, 2.5, 3.5], &Device::Cpu).unwrap(),
        )],
    );
    let x = save(
        d,
        "x",
        &[
            ("clip_l", t(2, 8, 0.0)),
            ("clip_g", t(2, 10, 0.0).to_dtype(DType::BF16).unwrap()),
        ],
    );
    let shapes: Vec<(usize, Vec<usize>)> = [&a, &b, &c, &x]
        .iter()
        .map(|p| {
            let s = read_shape(p).unwrap();
            (s.vectors, s.widths)
        })
        .collect();
    assert_eq!(
        shapes,
        [(2, vec![8]), (3, vec![8]), (1, vec![4]), (2, vec![8, 10])]
    );
    let b = Embedding::load(&file(&b)).unwrap();
    let v = b.vectors_for(0).unwrap();
    assert_eq!(v.dtype(), DType::F32);
    assert_eq!(
        v.to_vec2::<f32>().unwrap(),
        t(3, 8, 2.0).to_vec2::<f32>().unwrap(),
        "these values are exact in f16"
    );
    assert!(b.vectors_for(1).is_none());
    let x = Embedding::load(&file(&x)).unwrap();
    assert_eq!(x.vectors_for(1).unwrap().dims(), &[2, 10]);
    // A1111's short hash of the file.
    let full = crate::engine::sha256_file(&d.join("x.safetensors")).unwrap();
    assert_eq!(x.hash, full[..12]);
}

#[test]
fn files_that_are_not_embeddings_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let two = save(d, "two", &[("a", t(1, 8, 0.0)), ("b", t(1, 8, 0.0))]);
    let cube = save(
        d,
        "cube",
        &[("emb_params", t(2, 4, 0.0).reshape((2, 2, 2)).unwrap())],
    );
    let long = save(d, "long", &[("emb_params", t(MAX_VECTORS + 1, 4, 0.0))]);
    let ints = save(
        d,
        "ints",
        &[(
            "emb_params",
            Tensor::new(&[[1u32, 2]], &Device::Cpu).unwrap(),
        )],
    );
    let odd = save(
        d,
        "odd",
        &[("clip_l", t(2, 8, 0.0)), ("clip_g", t(3, 10, 0.0))],
    );
    let junk = d.join("junk.safetensors");
    std::fs::write(&junk, b"not a safetensors file").unwrap();
    for p in [&two, &cube, &long, &ints, &odd, &junk] {
        let e = read_shape(p).expect_err("not an embedding");
        assert!(e.to_string().contains("embedding"), "{e}");
    }
    let listed = list_embeddings(Some(d), Some(&[8]));
    assert_eq!(listed.len(), 6);
    assert!(listed.iter().all(|e| !e.fits && e.error.is_some()));
}

#[test]
fn a_model_gets_the_embeddings_that_fit_it_and_required_names_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    save(d, "sd1", &[("emb_params", t(2, 8, 1.0))]);
    save(d, "sd2", &[("emb_params", t(1, 16, 1.0))]);
    save(
        d,
        "xl",
        &[("clip_l", t(2, 8, 0.0)), ("clip_g", t(2, 10, 0.0))],
    );
    let lib = EmbeddingLibrary::new(Some(d.to_path_buf()));
    let names = |v: Vec<Arc<Embedding>>| v.iter().map(|e| e.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(lib.for_model(&[8], &[]).unwrap()), ["sd1"]);
    assert_eq!(
        names(lib.for_model(&[16], &["SD2".into()]).unwrap()),
        ["sd2"]
    );
    assert_eq!(
        names(lib.for_model(&[8, 10], &["xl".into()]).unwrap()),
        ["xl"]
    );

    let field_and_message = |r: Result<Vec<Arc<Embedding>>>| match r {
        Err(EngineError::InvalidInput { field, message }) => (field, message),
        other => panic!("expected an input error, got {other:?}"),
    };
    let (field, message) = field_and_message(lib.for_model(&[8], &["gone".into()]));
    assert_eq!(field, "embeddings");
    assert!(
        message.contains("\"gone\"") && message.contains("sd1, sd2, xl"),
        "{message}"
    );
    let (field, message) = field_and_message(lib.for_model(&[8], &["xl".into()]));
    assert_eq!(field, "embeddings");
    assert!(
        message.contains("\"xl\"") && message.contains("[8]"),
        "{message}"
    );

    let empty = EmbeddingLibrary::new(None);
    let (_, message) = field_and_message(empty.for_model(&[8], &["sd1".into()]));
    assert!(message.contains("none in"), "{message}");

    let listed = list_embeddings(Some(d), Some(&[8, 10]));
    let rows: Vec<(&str, usize, Vec<usize>, usize, bool)> = listed
        .iter()
        .map(|e| (e.name.as_str(), e.vectors, e.shape.clone(), e.dim, e.fits))
        .collect();
    assert_eq!(
        rows,
        [
            ("sd1", 2, vec![2, 8], 8, false),
            ("sd2", 1, vec![1, 16], 16, false),
            ("xl", 2, vec![2, 18], 18, true),
        ]
    );
    assert!(list_embeddings(Some(d), None).iter().all(|e| !e.fits));
}

#[test]
fn loaded_vectors_are_kept_until_the_file_changes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let path = save(d, "e", &[("emb_params", t(1, 8, 1.0))]);
    let lib = EmbeddingLibrary::new(Some(d.to_path_buf()));
    let first = lib.for_model(&[8], &[]).unwrap().remove(0);
    let again = lib.for_model(&[8], &[]).unwrap().remove(0);
    assert!(Arc::ptr_eq(&first, &again), "the cached vectors are reused");
    // A rewrite with another size and vector count is read again.
    save(d, "e", &[("emb_params", t(3, 8, 5.0))]);
    let f = std::fs::File::options().write(true).open(&path).unwrap();
    f.set_modified(SystemTime::now() + std::time::Duration::from_secs(5))
        .unwrap();
    let changed = lib.for_model(&[8], &[]).unwrap().remove(0);
    assert_eq!(changed.shape.vectors, 3);
    assert_eq!(
        changed.vectors_for(0).unwrap().to_vec2::<f32>().unwrap(),
        t(3, 8, 5.0).to_vec2::<f32>().unwrap()
    );
}

#[test]
fn required_names_are_trimmed_deduplicated_and_bounded() {
    let names = |v: &[&str]| check_names(v.iter().map(|s| s.to_string()).collect());
    assert_eq!(names(&[" elf ", "elf", "orc"]).unwrap(), ["elf", "orc"]);
    let long = "x".repeat(201);
    for bad in [vec![""], vec!["elf", "  "], vec![long.as_str()]] {
        match names(&bad) {
            Err(EngineError::InvalidInput { field, .. }) => assert_eq!(field, "embeddings"),
            other => panic!("{bad:?}: {other:?}"),
        }
    }
    let many: Vec<String> = (0..=MAX_EMBEDDINGS).map(|i| format!("e{i}")).collect();
    match check_names(many) {
        Err(EngineError::InvalidInput { field, message }) => {
            assert_eq!(field, "embeddings");
            assert!(message.contains(&MAX_EMBEDDINGS.to_string()), "{message}");
        }
        other => panic!("{other:?}"),
    }
}
