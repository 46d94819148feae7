//! The layers every model here is built from, each a thin owner of its weights that calls the
//! fused kernels: convolution, GroupNorm(+SiLU), linear projections. Weight names are diffusers'.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::weights::{visit_tensor, VisitWeights, WeightFn, WeightLayout};
use crate::engine::kernels::{self, Conv2dParams};

/// A 2-D convolution with bias, stored in the (Cout, Cin*kh*kw) layout the kernel's gemm reads.
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,
    bias: Tensor,
    params: Conv2dParams,
}

impl Conv2d {
    pub fn new(
        vb: VarBuilder,
        cin: usize,
        cout: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        let weight = vb
            .get((cout, cin, kernel, kernel), "weight")?
            .contiguous()?;
        let bias = vb.get(cout, "bias")?;
        Ok(Self {
            weight,
            bias,
            params: Conv2dParams { stride, padding },
        })
    }

    /// A convolution whose checkpoint has no bias (TAESD's stride-2 and post-upsample convs):
    /// the kernel adds zeros.
    pub fn without_bias(
        vb: VarBuilder,
        cin: usize,
        cout: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        let weight = vb
            .get((cout, cin, kernel, kernel), "weight")?
            .contiguous()?;
        let bias = Tensor::zeros(cout, weight.dtype(), weight.device())?;
        Ok(Self {
            weight,
            bias,
            params: Conv2dParams { stride, padding },
        })
    }

    /// The 3x3, stride-1, padding-1 convolution that makes up most of both models.
    pub fn same3(vb: VarBuilder, cin: usize, cout: usize) -> Result<Self> {
        Self::new(vb, cin, cout, 3, 1, 1)
    }

    pub fn pointwise(vb: VarBuilder, cin: usize, cout: usize) -> Result<Self> {
        Self::new(vb, cin, cout, 1, 1, 0)
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let _span = tracing::trace_span!("conv2d").entered();
        kernels::conv2d(x, &self.weight, &self.bias, self.params)
    }
}

impl VisitWeights for Conv2d {
    fn visit_weights(&mut self, prefix: &str, f: &mut WeightFn) -> Result<()> {
        visit_tensor(&mut self.weight, prefix, WeightLayout::Conv, f)
    }
}

/// GroupNorm over channels (dim 1), optionally fused with the SiLU that follows it.
#[derive(Debug, Clone)]
pub struct GroupNorm {
    gamma: Tensor,
    beta: Tensor,
    groups: usize,
    eps: f64,
}

impl GroupNorm {
    pub fn new(vb: VarBuilder, groups: usize, channels: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            gamma: vb.get(channels, "weight")?,
            beta: vb.get(channels, "bias")?,
            groups,
            eps,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let _span = tracing::trace_span!("group_norm").entered();
        kernels::group_norm(x, self.groups, &self.gamma, &self.beta, self.eps, false)
    }

    /// `silu(group_norm(x))` in one pass.
    pub fn forward_silu(&self, x: &Tensor) -> Result<Tensor> {
        let _span = tracing::trace_span!("group_norm_silu").entered();
        kernels::group_norm(x, self.groups, &self.gamma, &self.beta, self.eps, true)
    }
}

/// A linear projection applied to the last dim of any rank, as one 2-D gemm. The weight is
/// kept transposed, (in, out) row-major, which is the layout the gemm streams best.
#[derive(Debug, Clone)]
pub struct Linear {
    weight_t: Tensor,
    bias: Tensor,
}

impl Linear {
    pub fn new(vb: VarBuilder, cin: usize, cout: usize, bias: bool) -> Result<Self> {
        // 1x1-convolution weights (cout, cin, 1, 1) are accepted where a linear is expected:
        // some VAE checkpoints store the attention projections that way.
        let weight = match vb.get((cout, cin), "weight") {
            Ok(w) => w,
            Err(e) => match vb.get((cout, cin, 1, 1), "weight") {
                Ok(w) => w.reshape((cout, cin))?,
                Err(_) => return Err(e),
            },
        };
        let bias = if bias {
            vb.get(cout, "bias")?
        } else {
            Tensor::zeros(cout, weight.dtype(), weight.device())?
        };
        Ok(Self {
            weight_t: weight.t()?.contiguous()?,
            bias,
        })
    }

    pub fn out_features(&self) -> usize {
        self.weight_t.dims()[1]
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let _span = tracing::trace_span!("linear").entered();
        let dims = x.dims().to_vec();
        let cin = *dims.last().unwrap_or(&0);
        let rows = x.elem_count() / cin.max(1);
        let y = kernels::linear_t(&x.reshape((rows, cin))?, &self.weight_t, &self.bias)?;
        let mut out = dims;
        *out.last_mut().expect("rank >= 1") = self.out_features();
        y.reshape(out)
    }
}

impl VisitWeights for Linear {
    fn visit_weights(&mut self, prefix: &str, f: &mut WeightFn) -> Result<()> {
        visit_tensor(&mut self.weight_t, prefix, WeightLayout::LinearT, f)
    }
}

/// Nearest-neighbour upsampling to `(h, w)`, as diffusers' `Upsample2D` does before its conv.
pub fn upsample_nearest(x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let _span = tracing::trace_span!("upsample").entered();
    x.upsample_nearest2d(h, w)
}
