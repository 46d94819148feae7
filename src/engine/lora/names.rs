//! Which layer of the loaded model a LoRA module means. kohya names join every part with `_`,
//! and underscores are ambiguous (`down_blocks`, `to_out_0`, `ff_net_0_proj`, `self_attn`), so
//! a name is looked up among the model's own module names with `.` turned into `_`, never
//! rewritten by string replacement. SDXL kohya files name UNet modules in the original SGM
//! layout (`input_blocks_4_1_transformer_blocks_0_attn1_to_q`); those go through the
//! single-file loader's SGM -> diffusers map first.

use std::collections::HashMap;

use super::file::{ModuleName, Part};
use crate::engine::loading::checkpoint::map_sgm_unet_key;
use crate::engine::models::weights::WeightLayout;

/// One weight a LoRA can target: how it is stored and its shape.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub layout: WeightLayout,
    pub dims: Vec<usize>,
}

impl Target {
    /// `(out, fan_in)` of the weight as PyTorch stores it (`in * kh * kw` for a conv).
    pub(crate) fn out_and_fan_in(&self) -> (usize, usize) {
        let d = &self.dims;
        match self.layout {
            WeightLayout::LinearT => (d[1], d[0]),
            WeightLayout::Linear => (d[0], d[1]),
            WeightLayout::Conv => (d[0], d[1..].iter().product()),
        }
    }
}

/// The model's module names, per part.
#[derive(Debug, Default)]
pub(crate) struct ModelNames {
    pub targets: HashMap<(Part, String), Target>,
    underscored: HashMap<(Part, String), String>,
    /// The UNet's `layers_per_block`, which the SGM block numbering depends on.
    layers_per_block: usize,
}

impl ModelNames {
    pub(crate) fn new(layers_per_block: usize) -> Self {
        Self {
            layers_per_block,
            ..Self::default()
        }
    }

    pub(crate) fn insert(&mut self, part: Part, name: &str, target: Target) {
        self.underscored
            .insert((part, name.replace('.', "_")), name.to_string());
        self.targets.insert((part, name.to_string()), target);
    }

    /// The model module `name` of `part` means, if any.
    pub(crate) fn resolve(&self, part: Part, name: &ModuleName) -> Option<String> {
        let lookup = |u: &str| self.underscored.get(&(part, u.to_string())).cloned();
        match name {
            ModuleName::Dotted(d) => {
                if self.targets.contains_key(&(part, d.clone())) {
                    Some(d.clone())
                } else {
                    lookup(&d.replace('.', "_"))
                }
            }
            ModuleName::Underscored(u) => lookup(u).or_else(|| match part {
                Part::Unet => lookup(&sgm_to_diffusers(u, self.layers_per_block)?),
                _ => None,
            }),
        }
    }
}

/// Leaves of an SGM resnet (and the down/upsamplers) as kohya writes them, with their dots.
const SGM_LEAVES: [(&str, &str); 6] = [
    ("in_layers_2", "in_layers.2"),
    ("emb_layers_1", "emb_layers.1"),
    ("out_layers_3", "out_layers.3"),
    ("skip_connection", "skip_connection"),
    ("op", "op"),
    ("conv", "conv"),
];

/// Top-level SGM modules outside the numbered blocks.
const SGM_TOP: [(&str, &str); 6] = [
    ("time_embed_0", "time_embed.0"),
    ("time_embed_2", "time_embed.2"),
    ("label_emb_0_0", "label_emb.0.0"),
    ("label_emb_0_2", "label_emb.0.2"),
    ("input_blocks_0_0", "input_blocks.0.0"),
    ("out_2", "out.2"),
];

/// A kohya SGM-layout UNet name -> the diffusers name with `_` for `.` (to look up among the
/// model's names). Block numbers are mapped by the single-file loader's own key map; inside a
/// transformer SGM and diffusers names agree.
pub(crate) fn sgm_to_diffusers(name: &str, layers_per_block: usize) -> Option<String> {
    let module = |dotted: &str| -> Option<String> {
        let key = map_sgm_unet_key(&format!("{dotted}.weight"), layers_per_block)?;
        Some(key.strip_suffix(".weight")?.replace('.', "_"))
    };
    if let Some((_, dotted)) = SGM_TOP.iter().find(|(u, _)| *u == name) {
        return module(dotted);
    }
    let (block, tail) = if let Some(rest) = name.strip_prefix("middle_block_") {
        let (sub, tail) = rest.split_once('_')?;
        (format!("middle_block.{}", sub.parse::<usize>().ok()?), tail)
    } else {
        let (group, rest) = ["input_blocks_", "output_blocks_"]
            .iter()
            .find_map(|g| Some((g.trim_end_matches('_'), name.strip_prefix(g)?)))?;
        let mut it = rest.splitn(3, '_');
        let index: usize = it.next()?.parse().ok()?;
        let sub: usize = it.next()?.parse().ok()?;
        (format!("{group}.{index}.{sub}"), it.next()?)
    };
    match SGM_LEAVES.iter().find(|(u, _)| *u == tail) {
        Some((_, leaf)) => module(&format!("{block}.{leaf}")),
        None => {
            // A transformer: its inner names are diffusers' already; map the block only.
            let probe = module(&format!("{block}.proj_in"))?;
            let base = probe.strip_suffix("proj_in")?;
            Some(format!("{base}{tail}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sgm_names_map_to_diffusers_names() {
        let cases = [
            (
                "input_blocks_4_1_transformer_blocks_0_attn1_to_q",
                "down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q",
            ),
            ("middle_block_1_proj_in", "mid_block_attentions_0_proj_in"),
            ("middle_block_2_out_layers_3", "mid_block_resnets_1_conv2"),
            (
                "output_blocks_2_1_transformer_blocks_1_ff_net_0_proj",
                "up_blocks_0_attentions_2_transformer_blocks_1_ff_net_0_proj",
            ),
            ("output_blocks_2_2_conv", "up_blocks_0_upsamplers_0_conv"),
            ("input_blocks_3_0_op", "down_blocks_0_downsamplers_0_conv"),
            (
                "input_blocks_4_0_skip_connection",
                "down_blocks_1_resnets_0_conv_shortcut",
            ),
            (
                "input_blocks_1_0_emb_layers_1",
                "down_blocks_0_resnets_0_time_emb_proj",
            ),
            ("time_embed_0", "time_embedding_linear_1"),
        ];
        for (sgm, diffusers) in cases {
            assert_eq!(
                sgm_to_diffusers(sgm, 2).as_deref(),
                Some(diffusers),
                "{sgm}"
            );
        }
        assert_eq!(sgm_to_diffusers("input_blocks_x_1_proj_in", 2), None);
        assert_eq!(sgm_to_diffusers("down_blocks_0_resnets_0_conv1", 2), None);
    }
}
