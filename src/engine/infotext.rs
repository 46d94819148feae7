//! AUTOMATIC1111's generation-parameters text ("infotext"): the `parameters` text that A1111
//! writes into every image and reads back in "PNG Info". We write it so A1111 and the tools built
//! around it (civitai, image browsers) read our images, and parse it so `/sdapi/v1/png-info` and
//! "reuse these settings" work on images from either program.
//!
//! Layout, as A1111's `create_infotext` joins it:
//! ```text
//! <prompt, possibly several lines>
//! Negative prompt: <negative prompt, possibly several lines>
//! Steps: 25, Sampler: Euler a, CFG scale: 8, Seed: 123, Size: 512x768, Model: x, Version: ...
//! ```

use std::fmt;
use std::sync::OnceLock;

use regex::Regex;

/// The key A1111 uses for the program version; [`InfoText::push_version`] adds it.
pub const VERSION_KEY: &str = "Version";

/// One image's generation parameters in A1111's vocabulary.
///
/// Fields A1111 always writes are plain values; the rest are `Option`s that are left out of the
/// text when `None`. Keys we do not model travel in `extra`, in order, so parsing and writing
/// again loses nothing.
#[derive(Debug, Clone, PartialEq)]
pub struct InfoText {
    pub prompt: String,
    pub negative_prompt: String,
    pub steps: usize,
    /// The sampler as written, e.g. `Euler a` or (older A1111) `DPM++ 2M Karras`.
    pub sampler: String,
    /// A1111 1.9+ writes the noise schedule separately, e.g. `Karras`.
    pub schedule_type: Option<String>,
    pub cfg_scale: f64,
    pub seed: i64,
    pub width: u32,
    pub height: u32,
    pub model: Option<String>,
    /// A1111's short hash: the first 10 hex digits of the checkpoint file's sha256.
    pub model_hash: Option<String>,
    pub denoising_strength: Option<f64>,
    pub hires_upscale: Option<f64>,
    pub hires_steps: Option<usize>,
    pub hires_upscaler: Option<String>,
    /// Every other `key: value` pair, in the order written (`Version` lives here too).
    pub extra: Vec<(String, String)>,
}

impl Default for InfoText {
    /// A1111's txt2img defaults; [`InfoText::parse`] falls back to them for missing keys, which
    /// is what A1111's "send to txt2img" does (it leaves the UI's values in place).
    fn default() -> Self {
        InfoText {
            prompt: String::new(),
            negative_prompt: String::new(),
            steps: 20,
            sampler: "Euler a".to_string(),
            schedule_type: None,
            cfg_scale: 7.0,
            seed: -1,
            width: 512,
            height: 512,
            model: None,
            model_hash: None,
            denoising_strength: None,
            hires_upscale: None,
            hires_steps: None,
            hires_upscaler: None,
            extra: Vec::new(),
        }
    }
}

/// `limner <crate version>`, the value we write under [`VERSION_KEY`].
pub fn limner_version() -> String {
    format!("limner {}", env!("CARGO_PKG_VERSION"))
}

/// Quotes a value the way A1111's `quote()` does: JSON (non-ASCII kept) when it holds a comma,
/// a colon or a newline. We also quote a value that starts with `"`, because A1111's parser
/// would otherwise unquote it on the way back in.
fn quote(value: &str) -> String {
    let needs = value.contains([',', ':', '\n']) || value.starts_with('"');
    if !needs {
        return value.to_string();
    }
    // serde_json escapes exactly what Python's json.dumps(ensure_ascii=False) escapes:
    // quotes, backslashes and control characters.
    serde_json::to_string(value).unwrap_or_else(|_| value.to_string())
}

/// A1111's `unquote()`: a value wrapped in double quotes is JSON; if it does not parse, it is
/// kept as written.
fn unquote(value: &str) -> String {
    if value.len() >= 2 && value.starts_with('"') && value.ends_with('"') {
        if let Ok(s) = serde_json::from_str::<String>(value) {
            return s;
        }
    }
    value.to_string()
}

/// Numbers as A1111 prints them for the values people type: `8` for 8.0, `7.5`, `0.4`.
/// (Rust's shortest round-trip formatting drops a trailing `.0` and never uses exponents.)
fn number(x: f64) -> String {
    format!("{x}")
}

/// A1111's `re_param`: `key: value` with a JSON-quoted or comma-free value.
fn param_regex() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r#"\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)"#)
            .unwrap_or_else(|e| unreachable!("static regex: {e}"))
    })
}

impl InfoText {
    /// Adds `Version: limner x.y.z` (replacing an earlier version entry), as A1111 adds its own.
    pub fn push_version(&mut self) {
        self.extra.retain(|(k, _)| k != VERSION_KEY);
        self.extra.push((VERSION_KEY.to_string(), limner_version()));
    }

    /// The value of an `extra` key, if present.
    pub fn extra_value(&self, key: &str) -> Option<&str> {
        self.extra
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The `key: value` pairs of the last line, in A1111's order, as written (for
    /// `/sdapi/v1/png-info`'s parsed `parameters`).
    pub fn pairs(&self) -> Vec<(String, String)> {
        self.params()
    }

    /// The `key: value` pairs of the last line, in A1111's order.
    fn params(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        let mut put = |k: &str, v: String| out.push((k.to_string(), v));
        put("Steps", self.steps.to_string());
        put("Sampler", self.sampler.clone());
        if let Some(s) = &self.schedule_type {
            put("Schedule type", s.clone());
        }
        put("CFG scale", number(self.cfg_scale));
        put("Seed", self.seed.to_string());
        put("Size", format!("{}x{}", self.width, self.height));
        if let Some(h) = &self.model_hash {
            put("Model hash", h.clone());
        }
        if let Some(m) = &self.model {
            put("Model", m.clone());
        }
        if let Some(d) = self.denoising_strength {
            put("Denoising strength", number(d));
        }
        if let Some(u) = self.hires_upscale {
            put("Hires upscale", number(u));
        }
        if let Some(s) = self.hires_steps {
            put("Hires steps", s.to_string());
        }
        if let Some(u) = &self.hires_upscaler {
            put("Hires upscaler", u.clone());
        }
        // A1111 writes its extra_generation_params after the fixed keys and the version last.
        let (version, others): (Vec<_>, Vec<_>) =
            self.extra.iter().partition(|(k, _)| k == VERSION_KEY);
        for (k, v) in others.into_iter().chain(version) {
            put(k, v.clone());
        }
        out
    }

    /// Reads A1111's format back, as A1111's `parse_generation_parameters` does: the last line
    /// holds the parameters when it has at least three `key: value` pairs (otherwise it is part
    /// of the prompt); lines before it are the prompt until one starts with `Negative prompt:`.
    /// Keys we model but cannot parse (e.g. `Steps: many`) are kept in `extra` unchanged;
    /// missing keys take the [`Default`] values. Never fails: any text is at least a prompt.
    pub fn parse(text: &str) -> InfoText {
        let mut info = InfoText::default();
        let mut lines: Vec<&str> = text.trim().split('\n').collect();
        let last = lines.pop().unwrap_or("");
        let re = param_regex();
        let params_line = if re.captures_iter(last).count() >= 3 {
            last
        } else {
            lines.push(last);
            ""
        };

        let mut prompt: Vec<&str> = Vec::new();
        let mut negative: Vec<&str> = Vec::new();
        let mut in_negative = false;
        for line in lines {
            let mut line = line.trim();
            if let Some(rest) = line.strip_prefix("Negative prompt:") {
                in_negative = true;
                line = rest.trim();
            }
            if in_negative {
                negative.push(line);
            } else {
                prompt.push(line);
            }
        }
        info.prompt = prompt.join("\n");
        info.negative_prompt = negative.join("\n");

        for cap in re.captures_iter(params_line) {
            let key = cap.get(1).map_or("", |m| m.as_str()).to_string();
            let raw = cap.get(2).map_or("", |m| m.as_str());
            let value = unquote(raw);
            if !info.set_known(&key, &value) {
                info.extra.push((key, value));
            }
        }
        info
    }

    /// Stores a modelled key; false when the key is not modelled or its value does not parse.
    fn set_known(&mut self, key: &str, value: &str) -> bool {
        fn num<T: std::str::FromStr>(v: &str) -> Option<T> {
            v.trim().parse().ok()
        }
        match key {
            "Steps" => num(value).map(|v| self.steps = v).is_some(),
            "Sampler" => {
                self.sampler = value.to_string();
                true
            }
            "Schedule type" => {
                self.schedule_type = Some(value.to_string());
                true
            }
            "CFG scale" => num(value).map(|v| self.cfg_scale = v).is_some(),
            "Seed" => num(value).map(|v| self.seed = v).is_some(),
            "Size" => match value.trim().split_once('x') {
                Some((w, h)) => match (num(w), num(h)) {
                    (Some(w), Some(h)) => {
                        self.width = w;
                        self.height = h;
                        true
                    }
                    _ => false,
                },
                None => false,
            },
            "Model hash" => {
                self.model_hash = Some(value.to_string());
                true
            }
            "Model" => {
                self.model = Some(value.to_string());
                true
            }
            "Denoising strength" => num(value)
                .map(|v| self.denoising_strength = Some(v))
                .is_some(),
            "Hires upscale" => num(value).map(|v| self.hires_upscale = Some(v)).is_some(),
            "Hires steps" => num(value).map(|v| self.hires_steps = Some(v)).is_some(),
            "Hires upscaler" => {
                self.hires_upscaler = Some(value.to_string());
                true
            }
            _ => false,
        }
    }
}

impl fmt::Display for InfoText {
    /// A1111's layout; the whole text is trimmed as A1111 trims it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let params = self
            .params()
            .into_iter()
            .map(|(k, v)| {
                // A1111 writes a bare key for flags whose value equals the key.
                if k == v {
                    k
                } else {
                    format!("{k}: {}", quote(&v))
                }
            })
            .collect::<Vec<_>>()
            .join(", ");
        let negative = if self.negative_prompt.is_empty() {
            String::new()
        } else {
            format!("\nNegative prompt: {}", self.negative_prompt)
        };
        let text = format!("{}{negative}\n{params}", self.prompt);
        f.write_str(text.trim())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> InfoText {
        InfoText {
            prompt: "portrait of a dwarf cleric, (detailed face:1.2)".into(),
            negative_prompt: "blurry, lowres".into(),
            steps: 25,
            sampler: "Euler a".into(),
            schedule_type: Some("Karras".into()),
            cfg_scale: 8.0,
            seed: 123,
            width: 512,
            height: 768,
            model: Some("dreamshaper_8".into()),
            model_hash: Some("abcd1234ef".into()),
            denoising_strength: Some(0.4),
            hires_upscale: Some(2.0),
            hires_steps: Some(10),
            hires_upscaler: Some("Latent".into()),
            extra: vec![("Version".into(), "limner 0.1.0".into())],
        }
    }

    #[test]
    fn writes_the_a1111_layout() {
        let expected = "portrait of a dwarf cleric, (detailed face:1.2)\n\
            Negative prompt: blurry, lowres\n\
            Steps: 25, Sampler: Euler a, Schedule type: Karras, CFG scale: 8, Seed: 123, \
            Size: 512x768, Model hash: abcd1234ef, Model: dreamshaper_8, Denoising strength: 0.4, \
            Hires upscale: 2, Hires steps: 10, Hires upscaler: Latent, Version: limner 0.1.0";
        assert_eq!(sample().to_string(), expected);
    }

    #[test]
    fn round_trips() {
        let info = sample();
        assert_eq!(InfoText::parse(&info.to_string()), info);
    }

    #[test]
    fn omits_empty_negative_prompt_and_none_fields() {
        let info = InfoText {
            prompt: "a cat".into(),
            cfg_scale: 7.5,
            seed: 5,
            ..InfoText::default()
        };
        let text = info.to_string();
        assert_eq!(
            text,
            "a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7.5, Seed: 5, Size: 512x512"
        );
        assert_eq!(InfoText::parse(&text), info);
    }

    #[test]
    fn quotes_values_with_commas_colons_and_quotes() {
        let mut info = sample();
        info.model = Some("my:model, v2".into());
        info.extra.insert(
            0,
            (
                "Lora hashes".into(),
                "add_detail: 7c6bad76eb54, \"x\"".into(),
            ),
        );
        info.extra
            .insert(0, ("Note".into(), "\"quoted\" name".into()));
        let text = info.to_string();
        assert!(text.contains(r#"Model: "my:model, v2""#), "{text}");
        assert!(
            text.contains(r#"Lora hashes: "add_detail: 7c6bad76eb54, \"x\"""#),
            "{text}"
        );
        assert_eq!(InfoText::parse(&text), info);
    }

    #[test]
    fn multi_line_prompts_and_non_ascii_round_trip() {
        let mut info = sample();
        info.prompt = "an elf bard\nBREAK\nsinging in Café Ünter, 龍".into();
        info.negative_prompt = "ugly\nextra fingers".into();
        let parsed = InfoText::parse(&info.to_string());
        assert_eq!(parsed, info);
    }

    #[test]
    fn parses_a_literal_a1111_infotext() {
        // As written by A1111 1.10 for a hires-fix txt2img with a LoRA.
        let text = "masterpiece, best quality, 1girl, <lora:add_detail:0.5>\n\
            Negative prompt: (worst quality:1.4), lowres\n\
            Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 2918127445, \
            Size: 512x768, Model hash: 7f96a1a9ca, Model: anything-v5, VAE hash: 735e4c3a44, \
            VAE: vae-ft-mse-840000-ema-pruned.safetensors, Denoising strength: 0.45, \
            Clip skip: 2, Hires upscale: 2, Hires steps: 15, Hires upscaler: Latent, \
            Lora hashes: \"add_detail: 7c6bad76eb54\", Version: v1.10.1";
        let info = InfoText::parse(text);
        assert_eq!(
            info.prompt,
            "masterpiece, best quality, 1girl, <lora:add_detail:0.5>"
        );
        assert_eq!(info.negative_prompt, "(worst quality:1.4), lowres");
        assert_eq!(info.steps, 28);
        assert_eq!(info.sampler, "DPM++ 2M");
        assert_eq!(info.schedule_type.as_deref(), Some("Karras"));
        assert_eq!(info.cfg_scale, 7.0);
        assert_eq!(info.seed, 2918127445);
        assert_eq!((info.width, info.height), (512, 768));
        assert_eq!(info.model_hash.as_deref(), Some("7f96a1a9ca"));
        assert_eq!(info.model.as_deref(), Some("anything-v5"));
        assert_eq!(info.denoising_strength, Some(0.45));
        assert_eq!(info.hires_upscale, Some(2.0));
        assert_eq!(info.hires_steps, Some(15));
        assert_eq!(info.hires_upscaler.as_deref(), Some("Latent"));
        assert_eq!(info.extra_value("Clip skip"), Some("2"));
        assert_eq!(
            info.extra_value("Lora hashes"),
            Some("add_detail: 7c6bad76eb54")
        );
        assert_eq!(info.extra_value("Version"), Some("v1.10.1"));
        assert_eq!(
            info.extra_value("VAE"),
            Some("vae-ft-mse-840000-ema-pruned.safetensors")
        );
    }

    #[test]
    fn parses_old_style_text_without_negative_prompt() {
        let text = "a castle on a hill\nSteps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7.5, \
            Seed: -1, Size: 768x512, Model: sd15";
        let info = InfoText::parse(text);
        assert_eq!(info.prompt, "a castle on a hill");
        assert_eq!(info.negative_prompt, "");
        assert_eq!(info.sampler, "DPM++ 2M Karras");
        assert_eq!(info.schedule_type, None);
        assert_eq!(info.cfg_scale, 7.5);
        assert_eq!(info.seed, -1);
        assert_eq!((info.width, info.height), (768, 512));
    }

    #[test]
    fn text_without_parameters_is_all_prompt() {
        let info = InfoText::parse("just a prompt, with: one colon\nand a second line");
        assert_eq!(
            info.prompt,
            "just a prompt, with: one colon\nand a second line"
        );
        assert_eq!(info.steps, InfoText::default().steps);
    }

    #[test]
    fn unparseable_known_values_are_kept_in_extra() {
        let info = InfoText::parse("p\nSteps: many, Sampler: Euler, CFG scale: 3, Size: big");
        assert_eq!(info.extra_value("Steps"), Some("many"));
        assert_eq!(info.extra_value("Size"), Some("big"));
        assert_eq!(info.sampler, "Euler");
        assert_eq!(info.cfg_scale, 3.0);
    }

    #[test]
    fn push_version_replaces_an_earlier_one() {
        let mut info = sample();
        info.push_version();
        info.push_version();
        let versions: Vec<_> = info
            .extra
            .iter()
            .filter(|(k, _)| k == VERSION_KEY)
            .collect();
        assert_eq!(versions.len(), 1);
        assert!(versions[0].1.starts_with("limner "));
    }
}
