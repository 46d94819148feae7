//! Tests of sampler and scheduler name parsing and the A1111 lists.

use super::*;

fn spec(kind: SamplerKind, scheduler: SchedulerKind) -> SamplerSpec {
    SamplerSpec { kind, scheduler }
}

#[test]
fn names_and_aliases_parse_case_insensitively() {
    use SamplerKind::*;
    use SchedulerKind::*;
    for (name, want) in [
        ("Euler a", spec(EulerA, Automatic)),
        ("euler A", spec(EulerA, Automatic)),
        ("k_euler_a", spec(EulerA, Automatic)),
        ("Euler Ancestral", spec(EulerA, Automatic)),
        ("euler_ancestral", spec(EulerA, Automatic)),
        ("Euler", spec(Euler, Automatic)),
        ("K_EULER", spec(Euler, Automatic)),
        ("ddim", spec(SamplerKind::Ddim, Automatic)),
        ("DPM++ 2M", spec(DpmPp2m, Automatic)),
        ("k_dpmpp_2m", spec(DpmPp2m, Automatic)),
        ("DPM++ 2M Karras", spec(DpmPp2m, Karras)),
        ("dpm++  2m   karras", spec(DpmPp2m, Karras)),
        ("k_dpmpp_2m_ka", spec(DpmPp2m, Karras)),
        ("Euler Karras", spec(Euler, Karras)),
        ("Heun", spec(Heun, Automatic)),
        ("LMS Karras", spec(Lms, Karras)),
        ("UniPC", spec(UniPc, Automatic)),
        ("DPM++ SDE", spec(DpmPpSde, Automatic)),
        ("k_dpmpp_sde", spec(DpmPpSde, Automatic)),
        ("DPM++ SDE Karras", spec(DpmPpSde, Karras)),
        ("k_dpmpp_sde_ka", spec(DpmPpSde, Karras)),
        ("DPM++ 2M SDE", spec(DpmPp2mSde, Automatic)),
        ("DPM++ 2M SDE Exponential", spec(DpmPp2mSde, Exponential)),
        ("k_dpmpp_2m_sde_ka", spec(DpmPp2mSde, Karras)),
        ("DPM++ 2M SDE Heun", spec(DpmPp2mSdeHeun, Automatic)),
        ("DPM++ 2M SDE Heun Karras", spec(DpmPp2mSdeHeun, Karras)),
        ("DPM++ 3M SDE", spec(DpmPp3mSde, Automatic)),
        ("k_dpmpp_3m_sde", spec(DpmPp3mSde, Automatic)),
        ("DPM2", spec(Dpm2, Automatic)),
        ("k_dpm_2", spec(Dpm2, Automatic)),
        ("DPM2 a", spec(Dpm2A, Automatic)),
        ("k_dpm_2_a", spec(Dpm2A, Automatic)),
        ("DPM2 a Karras", spec(Dpm2A, Karras)),
        ("k_dpm_2_a_ka", spec(Dpm2A, Karras)),
        ("Restart", spec(Restart, Automatic)),
        ("sample_euler_ancestral", spec(EulerA, Automatic)),
        ("Euler SGM Uniform", spec(Euler, SgmUniform)),
        ("Euler SGMUniform", spec(Euler, SgmUniform)),
        ("DPM++ 2M Align Your Steps", spec(DpmPp2m, AlignYourSteps)),
        ("Euler a Normal", spec(EulerA, Normal)),
    ] {
        assert_eq!(parse_sampler(name, None).unwrap(), want, "{name}");
    }
}

#[test]
fn scheduler_argument_and_suffix_combine_like_a1111() {
    let p = parse_sampler("DPM++ 2M", Some("Karras")).unwrap();
    assert_eq!(p, parse_sampler("DPM++ 2M Karras", None).unwrap());
    assert_eq!(p.display_name(), "DPM++ 2M Karras");
    let p = parse_sampler("DPM++ 2M Karras", Some("Automatic")).unwrap();
    assert_eq!(p.scheduler, SchedulerKind::Karras);
    let p = parse_sampler("Euler a", Some("")).unwrap();
    assert_eq!(p.display_name(), "Euler a");
    assert_eq!(
        parse_sampler("Euler", Some("karras"))
            .unwrap()
            .display_name(),
        "Euler Karras"
    );
    // DDIM ignores schedules, as A1111 does.
    assert_eq!(
        parse_sampler("DDIM", Some("Karras"))
            .unwrap()
            .display_name(),
        "DDIM"
    );
}

#[test]
fn unknown_sampler_lists_the_known_ones() {
    let err = parse_sampler("PLMS", None).unwrap_err();
    assert!(err.is_client_error());
    let text = err.to_string();
    assert!(text.contains("PLMS"));
    for name in [
        "Euler a",
        "Euler",
        "DDIM",
        "DPM++ 2M",
        "DPM++ 2M Karras",
        "Heun",
        "LMS",
    ] {
        assert!(text.contains(name), "{text} should list {name}");
    }
    assert!(matches!(
        parse_sampler("Euler Karras Exponential", None),
        Err(EngineError::UnknownSampler { .. })
    ));
    assert!(matches!(
        parse_sampler("", None),
        Err(EngineError::UnknownSampler { .. })
    ));
    assert!(matches!(
        parse_sampler("Karras", None),
        Err(EngineError::UnknownSampler { .. })
    ));
}

#[test]
fn unknown_scheduler_is_an_invalid_field_listing_the_accepted_ones() {
    let err = parse_sampler("Euler", Some("Karras Exponential")).unwrap_err();
    assert!(matches!(
        err,
        EngineError::InvalidInput {
            field: "scheduler",
            ..
        }
    ));
    let text = err.to_string();
    for s in SchedulerKind::ALL {
        assert!(
            text.contains(s.name()) && text.contains(s.label()),
            "{text}"
        );
    }
}

#[test]
fn every_a1111_scheduler_parses_by_name_label_and_alias() {
    // A1111's `sd_schedulers.schedulers`, name and label, minus the experimental Karras Exponential.
    let a1111 = [
        ("automatic", "Automatic"),
        ("uniform", "Uniform"),
        ("karras", "Karras"),
        ("exponential", "Exponential"),
        ("polyexponential", "Polyexponential"),
        ("sgm_uniform", "SGM Uniform"),
        ("kl_optimal", "KL Optimal"),
        ("align_your_steps", "Align Your Steps"),
        ("simple", "Simple"),
        ("normal", "Normal"),
        ("ddim", "DDIM"),
        ("beta", "Beta"),
    ];
    for (name, label) in a1111 {
        let by_name = parse_sampler("Euler", Some(name)).unwrap();
        let by_label = parse_sampler("Euler", Some(label)).unwrap();
        assert_eq!(by_name, by_label, "{name}");
        assert_eq!(by_name.scheduler.name(), name);
        // "normal" must not fall back to Automatic.
        assert_eq!(
            by_name.scheduler == SchedulerKind::Automatic,
            name == "automatic"
        );
    }
    assert_eq!(
        parse_sampler("Euler", Some("SGMUniform"))
            .unwrap()
            .scheduler,
        SchedulerKind::SgmUniform
    );
    let listed: Vec<(String, String)> = known_schedulers()
        .into_iter()
        .map(|s| (s.name, s.label))
        .collect();
    let want: Vec<(String, String)> = a1111
        .iter()
        .map(|(n, l)| (n.to_string(), l.to_string()))
        .collect();
    assert_eq!(listed, want);
}

#[test]
fn lists_cover_every_sampler_and_scheduler() {
    let samplers = known_samplers();
    assert_eq!(samplers.len(), SamplerKind::ALL.len());
    for info in &samplers {
        assert!(parse_sampler(&info.name, None).is_ok());
        for alias in &info.aliases {
            assert_eq!(
                parse_sampler(alias, None).unwrap().kind,
                parse_sampler(&info.name, None).unwrap().kind
            );
        }
    }
    let names: Vec<&str> = samplers.iter().map(|s| s.name.as_str()).collect();
    for want in [
        "DPM++ 2M",
        "DPM++ SDE",
        "DPM++ 2M SDE",
        "DPM++ 3M SDE",
        "Euler a",
        "Euler",
        "LMS",
        "Heun",
        "DPM2",
        "DPM2 a",
        "Restart",
        "DDIM",
        "UniPC",
        "LCM",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    let option = |name: &str, key: &str| {
        samplers
            .iter()
            .find(|s| s.name == name)
            .and_then(|s| s.options.iter().find(|(k, _)| k == key))
            .map(|(_, v)| v.clone())
    };
    assert_eq!(option("DPM++ SDE", "scheduler").as_deref(), Some("karras"));
    assert_eq!(
        option("DPM++ 3M SDE", "scheduler").as_deref(),
        Some("exponential")
    );
    assert_eq!(
        option("DPM2", "discard_next_to_last_sigma").as_deref(),
        Some("True")
    );
    let rho: Vec<(String, f64)> = known_schedulers()
        .into_iter()
        .filter(|s| s.default_rho != -1.0)
        .map(|s| (s.name, s.default_rho))
        .collect();
    assert_eq!(
        rho,
        vec![
            ("karras".to_string(), 7.0),
            ("polyexponential".to_string(), 1.0)
        ]
    );
}

#[test]
fn display_names_parse_back() {
    for kind in SamplerKind::ALL {
        for scheduler in SchedulerKind::ALL {
            let spec = SamplerSpec::new(kind, scheduler);
            assert_eq!(parse_sampler(&spec.display_name(), None).unwrap(), spec);
        }
    }
}
