//! Reading a `.safetensors` weight file onto the CPU safely: pickles are refused (unpickling can
//! run arbitrary code), missing, truncated and foreign files are named in the error, and empty or
//! marker tensors (which carry a meaning by their presence only) load whatever their dtype.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use candle_core::safetensors::{Load, MmapedSafetensors};
use candle_core::{DType, Device, Tensor};

use crate::engine::error::{EngineError, Result};

/// Extensions of PyTorch pickle files.
const PICKLE_EXTENSIONS: [&str; 6] = ["ckpt", "pt", "pth", "bin", "pkl", "pickle"];

/// Keys whose presence is the information (A1111 and ComfyUI read them so); their values are
/// never used, and are stored in whatever dtype the writer chose (even `bool`, which candle
/// cannot hold), so they are loaded as empty `f32` tensors.
pub(crate) const MARKER_KEYS: [&str; 2] = [super::V_PRED_KEY, super::ZTSNR_KEY];

fn pickle_refusal(path: &Path) -> EngineError {
    EngineError::Model(format!(
        "{}: pickled checkpoints (.ckpt) are not supported because loading them can run \
         arbitrary code; convert it to .safetensors first on a machine where you trust the file \
         (e.g. in Python: `safetensors.torch.save_file(torch.load(path, weights_only=True)\
         [\"state_dict\"], \"model.safetensors\")`)",
        path.display()
    ))
}

/// Reads every tensor of a `.safetensors` file onto the CPU, in its stored dtype, under its
/// original names; `what` names the file's role in the errors ("single-file checkpoint").
pub(crate) fn load(path: &Path, what: &str) -> Result<HashMap<String, Tensor>> {
    let extension = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase());
    if extension.is_some_and(|e| PICKLE_EXTENSIONS.contains(&e.as_str())) {
        return Err(pickle_refusal(path));
    }
    check_safetensors_header(path, what)?;
    let corrupt = |e: candle_core::Error| {
        EngineError::Model(format!(
            "{}: truncated or corrupt safetensors file: {e}",
            path.display()
        ))
    };
    // SAFETY: the mapping is only read while this function runs, and every tensor is copied
    // into its own CPU buffer by `load` before the map is dropped. The remaining risk (another
    // process truncating the file meanwhile) is the one every mmap-based loader accepts.
    let file = unsafe { MmapedSafetensors::new(path) }.map_err(corrupt)?;
    let mut tensors = HashMap::new();
    for (name, view) in file.tensors() {
        let bad = |e: candle_core::Error| {
            EngineError::Model(format!("{}: tensor {name}: {e}", path.display()))
        };
        let tensor = if MARKER_KEYS.contains(&name.as_str()) {
            Tensor::zeros(0, DType::F32, &Device::Cpu).map_err(bad)?
        } else if view.shape().contains(&0) {
            // No bytes to read: built directly, so no dtype or alignment question arises. A dtype
            // candle lacks is moot for a tensor without elements.
            let dtype = DType::try_from(view.dtype()).unwrap_or(DType::F32);
            Tensor::zeros(view.shape(), dtype, &Device::Cpu).map_err(bad)?
        } else {
            view.load(&Device::Cpu).map_err(bad)?
        };
        tensors.insert(name, tensor);
    }
    Ok(tensors)
}

/// Looks at the first bytes: a safetensors file starts with a little-endian u64 header length
/// and a JSON object; PyTorch files start with a zip (`PK`) or pickle (`0x80`) signature.
fn check_safetensors_header(path: &Path, what: &str) -> Result<()> {
    let name = path.display();
    let mut file = std::fs::File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => EngineError::Model(format!("{what} {name} not found")),
        _ => EngineError::Model(format!("cannot open {name}: {e}")),
    })?;
    let size = file
        .metadata()
        .map_err(|e| EngineError::Model(format!("cannot read {name}: {e}")))?
        .len();
    let mut head = Vec::with_capacity(9);
    file.by_ref()
        .take(9)
        .read_to_end(&mut head)
        .map_err(|e| EngineError::Model(format!("cannot read {name}: {e}")))?;
    if head.starts_with(b"PK\x03\x04") || head.first() == Some(&0x80) {
        return Err(pickle_refusal(path));
    }
    let Some((len_bytes, rest)) = head.split_first_chunk::<8>() else {
        return Err(EngineError::Model(format!(
            "{name} is not a safetensors file: only {size} bytes long"
        )));
    };
    let header_len = u64::from_le_bytes(*len_bytes);
    if rest.first() != Some(&b'{') {
        return Err(EngineError::Model(format!(
            "{name} is not a safetensors file (it does not start with a JSON header)"
        )));
    }
    if header_len > size - 8 {
        return Err(EngineError::Model(format!(
            "{name} is truncated: its header alone claims {header_len} bytes but the file has {size}"
        )));
    }
    Ok(())
}
