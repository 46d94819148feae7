//! A1111's extra-network tags in prompts: `<lora:name>`, `<lora:name:0.8>`, `<lyco:...>`, and
//! the named form `<lora:name:te=0.8>`. As A1111's `extra_networks.parse_prompt`, every
//! `<word:args>` tag is cut out of the positive prompt before it is tokenized (other networks,
//! such as `hypernet`, are dropped with a log line), and the negative prompt is left alone:
//! A1111 parses tags from the positive prompts only, so a tag in the negative prompt stays text.

use std::sync::OnceLock;

use regex::Regex;

use super::LoraUse;
use crate::engine::error::{EngineError, Result};
use crate::engine::networks::{LoraRef, MAX_LORAS, MAX_LORA_WEIGHT};

/// A1111's `re_extra_net`.
fn tag_regex() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"<(\w+):([^>]+)>").expect("valid regex"))
}

/// The prompt without its tags and the LoRAs the tags apply, in prompt order.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptLoras {
    pub text: String,
    pub loras: Vec<LoraUse>,
}

fn number(tag: &str, what: &str, v: &str) -> Result<f64> {
    v.trim().parse::<f64>().map_err(|_| {
        EngineError::invalid(
            "prompt",
            format!("{tag}: the {what} weight {v:?} is not a number"),
        )
    })
}

/// Reads one `<lora:...>` tag's arguments the way A1111's `ExtraNetworkLora.activate` does:
/// positional `name[:te[:unet]]`, or named `te=` / `unet=` (`dyn=` is accepted and ignored).
/// limner applies one weight to both, so a different UNet weight is refused.
fn lora_args(tag: &str, args: &str) -> Result<LoraUse> {
    let mut positional = Vec::new();
    let mut named = Vec::new();
    for item in args.split(':') {
        match item.split_once('=') {
            Some((k, v)) => named.push((k.trim(), v)),
            None => positional.push(item),
        }
    }
    let name = positional.first().map(|s| s.trim()).unwrap_or_default();
    if name.is_empty() {
        return Err(EngineError::invalid(
            "prompt",
            format!("{tag}: the tag names no LoRA"),
        ));
    }
    let mut te = match positional.get(1) {
        Some(v) => number(tag, "LoRA", v)?,
        None => 1.0,
    };
    let mut unet = match positional.get(2) {
        Some(v) => Some(number(tag, "UNet", v)?),
        None => None,
    };
    for (k, v) in named {
        match k {
            "te" => te = number(tag, "text-encoder", v)?,
            "unet" => unet = Some(number(tag, "UNet", v)?),
            "dyn" => {}
            other => {
                return Err(EngineError::invalid(
                    "prompt",
                    format!("{tag}: unknown LoRA argument {other:?} (use <lora:name:weight>)"),
                ))
            }
        }
    }
    if let Some(u) = unet.filter(|&u| u != te) {
        return Err(EngineError::invalid(
            "prompt",
            format!(
                "{tag}: separate text-encoder ({te}) and UNet ({u}) weights are not supported; \
                 use one weight, <lora:{name}:{u}>"
            ),
        ));
    }
    Ok(LoraUse {
        name: name.to_string(),
        weight: te,
        field: "prompt",
    })
}

/// Cuts the extra-network tags out of `prompt`.
pub fn extract(prompt: &str) -> Result<PromptLoras> {
    let mut loras = Vec::new();
    for cap in tag_regex().captures_iter(prompt) {
        let (tag, kind, args) = (&cap[0], &cap[1], &cap[2]);
        match kind {
            "lora" | "lyco" => loras.push(lora_args(tag, args)?),
            other => tracing::info!(network = other, "skipping unknown extra network"),
        }
    }
    let text = tag_regex().replace_all(prompt, "").into_owned();
    Ok(PromptLoras { text, loras })
}

/// What a request's prompt and `loras` field ask for: the prompt to encode (tags cut out) and
/// every LoRA to apply, the tags first. A name given twice is applied twice, so the weights
/// add, as A1111 applies duplicate tags.
pub fn requested(prompt: &str, field: &[LoraRef]) -> Result<(String, Vec<LoraUse>)> {
    let tagged = extract(prompt)?;
    let mut loras = tagged.loras;
    for l in field {
        if l.name.trim().is_empty() {
            return Err(EngineError::invalid("loras", "a LoRA needs a name"));
        }
        loras.push(LoraUse {
            name: l.name.trim().to_string(),
            weight: l.weight,
            field: "loras",
        });
    }
    if loras.len() > MAX_LORAS {
        return Err(EngineError::invalid(
            "loras",
            format!(
                "at most {MAX_LORAS} LoRAs at once (prompt tags and the loras field together), \
                 got {}",
                loras.len()
            ),
        ));
    }
    if let Some(l) = loras
        .iter()
        .find(|l| !l.weight.is_finite() || l.weight.abs() > MAX_LORA_WEIGHT)
    {
        return Err(EngineError::invalid(
            l.field,
            format!(
                "LoRA {:?}: weight must be between -{MAX_LORA_WEIGHT} and {MAX_LORA_WEIGHT}, got {}",
                l.name, l.weight
            ),
        ));
    }
    Ok((tagged.text, loras))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uses(prompt: &str) -> Vec<(String, f64)> {
        extract(prompt)
            .unwrap()
            .loras
            .into_iter()
            .map(|l| (l.name, l.weight))
            .collect()
    }

    #[test]
    fn tags_are_cut_out_and_read_as_a1111_reads_them() {
        let p = extract("a knight <lora:elf:0.8>, <lyco:style> (red:1.2) <hypernet:x:1>").unwrap();
        assert_eq!(p.text, "a knight ,  (red:1.2) ");
        assert_eq!(
            uses("<lora:elf:0.8> <lyco:style> <lora:b:te=0.5> <lora:c:0.7:0.7>"),
            [
                ("elf".to_string(), 0.8),
                ("style".to_string(), 1.0),
                ("b".to_string(), 0.5),
                ("c".to_string(), 0.7)
            ]
        );
        assert_eq!(uses("<lora:a:1> <lora:a:0.5>").len(), 2);
        assert_eq!(extract("no tags (x:1.1)").unwrap().text, "no tags (x:1.1)");
    }

    #[test]
    fn bad_tags_are_prompt_errors() {
        for bad in [
            "<lora:a:lots>",
            "<lora:a:1:0.5>",
            "<lora: :1>",
            "<lora:a:x=1>",
        ] {
            match extract(bad) {
                Err(EngineError::InvalidInput { field, message }) => {
                    assert_eq!(field, "prompt");
                    assert!(message.contains(bad), "{message}");
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_loras_field_adds_to_the_tags_within_the_limits() {
        let field = |name: &str, weight: f64| LoraRef {
            name: name.into(),
            weight,
        };
        let (text, loras) = requested("a <lora:a:0.5>", &[field("a", 0.25)]).unwrap();
        assert_eq!(text, "a ");
        let got: Vec<_> = loras
            .iter()
            .map(|l| (l.name.as_str(), l.weight, l.field))
            .collect();
        assert_eq!(got, [("a", 0.5, "prompt"), ("a", 0.25, "loras")]);
        let field_of = |r: Result<(String, Vec<LoraUse>)>| match r {
            Err(EngineError::InvalidInput { field, message }) => (field, message),
            other => panic!("expected an input error, got {other:?}"),
        };
        let (f, m) = field_of(requested("x", &[field("a", 11.0)]));
        assert_eq!(f, "loras");
        assert!(m.contains("10"), "{m}");
        assert_eq!(field_of(requested("<lora:a:-12>", &[])).0, "prompt");
        assert_eq!(field_of(requested("x", &[field("a", f64::NAN)])).0, "loras");
        let many: Vec<_> = (0..=MAX_LORAS)
            .map(|i| field(&format!("l{i}"), 1.0))
            .collect();
        let (f, m) = field_of(requested("x", &many));
        assert_eq!(f, "loras");
        assert!(m.contains(&MAX_LORAS.to_string()), "{m}");
    }
}
