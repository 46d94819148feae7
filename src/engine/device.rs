//! The one place that picks the compute device and the default dtype, and logs the choice.

use candle_core::{DType, Device};

use super::error::{EngineError, Result};

/// What the user asked for: "auto" (CUDA, then Metal, then CPU), "cpu", "cuda", "cuda:N", "metal".
pub fn select_device(spec: &str) -> Result<Device> {
    let spec = spec.trim().to_ascii_lowercase();
    let device = match spec.as_str() {
        "" | "auto" => {
            if candle_core::utils::cuda_is_available() {
                Device::new_cuda(0)?
            } else if candle_core::utils::metal_is_available() {
                Device::new_metal(0)?
            } else {
                Device::Cpu
            }
        }
        "cpu" => Device::Cpu,
        "metal" => Device::new_metal(0).map_err(|e| unavailable("metal", e))?,
        s if s == "cuda" || s.starts_with("cuda:") => {
            let ordinal = s
                .strip_prefix("cuda:")
                .map(|n| {
                    n.parse::<usize>().map_err(|_| {
                        EngineError::invalid("device", format!("bad CUDA ordinal in '{s}'"))
                    })
                })
                .transpose()?
                .unwrap_or(0);
            Device::new_cuda(ordinal).map_err(|e| unavailable("cuda", e))?
        }
        other => {
            return Err(EngineError::invalid(
                "device",
                format!("unknown device '{other}'; use auto, cpu, cuda, cuda:N or metal"),
            ))
        }
    };
    tracing::info!(device = describe(&device), "compute device selected");
    Ok(device)
}

fn unavailable(name: &str, e: candle_core::Error) -> EngineError {
    EngineError::Unavailable(format!(
        "{name} device not available ({e}); was limner built with --features {name}?"
    ))
}

/// f16 on GPUs (half the memory, tensor cores), f32 on the CPU (candle's CPU f16 is slow).
pub fn default_dtype(device: &Device) -> DType {
    if device.is_cpu() {
        DType::F32
    } else {
        DType::F16
    }
}

/// Parses "f32" / "f16" / "bf16" ("auto" = [`default_dtype`]).
pub fn parse_dtype(spec: &str, device: &Device) -> Result<DType> {
    match spec.trim().to_ascii_lowercase().as_str() {
        "" | "auto" => Ok(default_dtype(device)),
        "f32" | "fp32" | "float32" => Ok(DType::F32),
        "f16" | "fp16" | "float16" | "half" => Ok(DType::F16),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        other => Err(EngineError::invalid(
            "dtype",
            format!("unknown dtype '{other}'; use auto, f32, f16 or bf16"),
        )),
    }
}

pub fn describe(device: &Device) -> &'static str {
    match device {
        Device::Cpu => "cpu",
        Device::Cuda(_) => "cuda",
        Device::Metal(_) => "metal",
    }
}

pub fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        DType::F32 => "f32",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_and_errors() {
        let cpu = select_device("cpu").unwrap();
        assert!(cpu.is_cpu());
        assert_eq!(parse_dtype("auto", &cpu).unwrap(), DType::F32);
        assert_eq!(parse_dtype("FP16", &cpu).unwrap(), DType::F16);
        let e = select_device("tpu").unwrap_err().to_string();
        assert!(e.contains("device") && e.contains("cuda"), "{e}");
        assert!(parse_dtype("f8", &cpu)
            .unwrap_err()
            .to_string()
            .contains("dtype"));
    }
}
