//! The networks of a Stable Diffusion pipeline, built from the models' own config files with
//! diffusers' weight names: the UNet, the CLIP text encoder and the VAE, on shared layers that
//! call the fused kernels in [`crate::engine::kernels`].

pub mod attention;
pub mod clip;
pub mod layers;
pub mod resnet;
pub mod taesd;
pub mod unet;
pub mod vae;
pub mod weights;
