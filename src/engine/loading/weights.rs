//! Weight sources for model loading beyond the files themselves: a wrapper that counts the bytes
//! every builder hands out (the weights' share of the memory estimate), and random weights as
//! plain tensors for benchmarks (`random:sd15`).

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

/// Sums the bytes of every weight a model takes from its builders: the weights' share of the
/// memory estimate, whatever the source (files, a converted checkpoint, random).
#[derive(Clone, Default)]
pub(super) struct WeightBytes(std::sync::Arc<std::sync::atomic::AtomicU64>);

impl WeightBytes {
    pub(super) fn builder<B: candle_nn::var_builder::SimpleBackend + 'static>(
        &self,
        inner: B,
        dtype: DType,
        device: &Device,
    ) -> VarBuilder<'static> {
        let backend = Counting {
            inner,
            bytes: self.clone(),
        };
        VarBuilder::from_backend(Box::new(backend), dtype, device.clone())
    }

    pub(super) fn get(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

struct Counting<B> {
    inner: B,
    bytes: WeightBytes,
}

impl<B: candle_nn::var_builder::SimpleBackend> candle_nn::var_builder::SimpleBackend
    for Counting<B>
{
    fn get(
        &self,
        s: candle_core::Shape,
        name: &str,
        h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = self.inner.get(s, name, h, dtype, dev)?;
        let n = (t.elem_count() * t.dtype().size_in_bytes()) as u64;
        self.bytes
            .0
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.inner.get_unchecked(name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.inner.contains_tensor(name)
    }
}

/// Hands out freshly drawn weights for any name: N(0, 1/fan_in) matrices and kernels, ones for
/// norm scales, zeros for biases. Benchmarks get realistic activations at the real shapes.
pub(super) struct RandomWeights;

impl candle_nn::var_builder::SimpleBackend for RandomWeights {
    fn get(
        &self,
        s: candle_core::Shape,
        name: &str,
        h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let dims = s.dims();
        let t = if dims.len() >= 2 {
            let fan_in: usize = dims[1..].iter().product();
            Tensor::randn(
                0f32,
                (1.0 / (fan_in.max(1) as f64).sqrt()) as f32,
                s,
                &Device::Cpu,
            )?
        } else if name.ends_with("weight") {
            Tensor::ones(s, DType::F32, &Device::Cpu)?
        } else if let candle_nn::Init::Const(v) = h {
            (Tensor::ones(s, DType::F32, &Device::Cpu)? * v)?
        } else {
            Tensor::zeros(s, DType::F32, &Device::Cpu)?
        };
        t.to_dtype(dtype)?.to_device(dev)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("random weights need a shape for {name}")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}
