//! Which device a chat model runs on: the request (`auto`, `cpu`, `cuda`, `cuda:N`, as
//! vLLM and llama.cpp users write it) and its resolution against what this machine has.
//! `auto` takes the first GPU when CUDA can open it and says why not otherwise; an explicit
//! `cuda` that cannot be honoured is an error, never a silent fallback.

use std::fmt;
use std::str::FromStr;

use super::cuda;

/// What the configuration asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DeviceRequest {
    /// A usable CUDA GPU if there is one, else the CPU.
    #[default]
    Auto,
    Cpu,
    /// GPU `N` (`cuda` alone is GPU 0).
    Cuda(usize),
}

impl FromStr for DeviceRequest {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim().to_ascii_lowercase();
        match text.as_str() {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| format!("{other:?} is not a device; use auto, cpu, cuda or cuda:N")),
        }
    }
}

impl fmt::Display for DeviceRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// A device that was checked to be usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda(usize),
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// The outcome of resolving a request.
#[derive(Debug, Clone)]
pub struct ResolvedDevice {
    pub device: Device,
    /// The GPU, when one was chosen.
    pub gpu: Option<cuda::GpuInfo>,
    /// Why `auto` chose the CPU, for the start-up log.
    pub fallback_reason: Option<String>,
}

impl DeviceRequest {
    /// Checks the request against this machine. Only an explicit `cuda` fails.
    pub fn resolve(self) -> Result<ResolvedDevice, cuda::CudaError> {
        match self {
            Self::Cpu => Ok(ResolvedDevice {
                device: Device::Cpu,
                gpu: None,
                fallback_reason: None,
            }),
            Self::Cuda(ordinal) => {
                let gpu = cuda::probe(ordinal)?;
                Ok(ResolvedDevice {
                    device: Device::Cuda(ordinal),
                    gpu: Some(gpu),
                    fallback_reason: None,
                })
            }
            Self::Auto => match cuda::probe(0) {
                Ok(gpu) => Ok(ResolvedDevice {
                    device: Device::Cuda(0),
                    gpu: Some(gpu),
                    fallback_reason: None,
                }),
                Err(error) => Ok(ResolvedDevice {
                    device: Device::Cpu,
                    gpu: None,
                    fallback_reason: Some(error.to_string()),
                }),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_spellings_users_write() {
        assert_eq!("auto".parse(), Ok(DeviceRequest::Auto));
        assert_eq!(" CPU ".parse(), Ok(DeviceRequest::Cpu));
        assert_eq!("cuda".parse(), Ok(DeviceRequest::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(DeviceRequest::Cuda(3)));
        let error = "cuda:x".parse::<DeviceRequest>().unwrap_err();
        assert!(error.contains("auto, cpu, cuda or cuda:N"), "{error}");
        assert!("tpu".parse::<DeviceRequest>().is_err());
        assert_eq!(DeviceRequest::Cuda(1).to_string(), "cuda:1");
    }
}
