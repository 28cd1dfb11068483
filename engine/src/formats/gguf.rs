//! GGUF files: memory-mapped, with typed access to their metadata.

use std::fs::File;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::Device;
use candle_core::quantized::QTensor;
use candle_core::quantized::gguf_file::{Content, Value};
use memmap2::Mmap;

use crate::error::{EngineError, Result};
use crate::formats::mapped;

/// An open GGUF file. Quantized weights are used in place through the mapping.
pub struct GgufFile {
    path: PathBuf,
    mmap: Arc<Mmap>,
    content: Content,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|source| EngineError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        // SAFETY: the mapping is read-only; like every mmap-based loader we assume the
        // model file is not truncated while the server runs.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|source| EngineError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let content = Content::read(&mut Cursor::new(&mmap[..]))
            .map_err(|e| EngineError::bad_model(path, format!("not a valid GGUF file: {e}")))?;
        Ok(Self {
            path: path.to_path_buf(),
            mmap: Arc::new(mmap),
            content,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// The named tensor, viewed in place in the mapping (copied only if misaligned).
    pub fn tensor(&self, name: &str) -> Result<QTensor> {
        let info = self.content.tensor_infos.get(name).ok_or_else(|| {
            EngineError::bad_model(&self.path, format!("tensor {name} is missing"))
        })?;
        let offset = self.content.tensor_data_offset.saturating_add(info.offset);
        if let Ok(offset) = usize::try_from(offset)
            && let Some(tensor) =
                mapped::new_qtensor(&self.mmap, offset, info.ggml_dtype, info.shape.clone())
        {
            return Ok(tensor);
        }
        self.content
            .tensor(&mut Cursor::new(&self.mmap[..]), name, &Device::Cpu)
            .map_err(|e| EngineError::bad_model(&self.path, format!("tensor {name}: {e}")))
    }

    pub fn value(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    fn required(&self, key: &str) -> Result<&Value> {
        self.value(key)
            .ok_or_else(|| EngineError::bad_model(&self.path, format!("missing metadata {key}")))
    }

    pub fn string(&self, key: &str) -> Option<&str> {
        self.value(key)
            .and_then(|v| v.to_string().ok())
            .map(String::as_str)
    }

    pub fn required_string(&self, key: &str) -> Result<&str> {
        self.required(key)?
            .to_string()
            .map(String::as_str)
            .map_err(|e| EngineError::bad_model(&self.path, format!("{key}: {e}")))
    }

    pub fn u32(&self, key: &str) -> Option<u32> {
        self.value(key).and_then(value_as_u64).map(|v| v as u32)
    }

    pub fn required_usize(&self, key: &str) -> Result<usize> {
        value_as_u64(self.required(key)?)
            .map(|v| v as usize)
            .ok_or_else(|| EngineError::bad_model(&self.path, format!("{key} is not an integer")))
    }

    pub fn f32(&self, key: &str) -> Option<f32> {
        match self.value(key)? {
            Value::F32(v) => Some(*v),
            Value::F64(v) => Some(*v as f32),
            other => value_as_u64(other).map(|v| v as f32),
        }
    }

    pub fn bool(&self, key: &str) -> Option<bool> {
        self.value(key).and_then(|v| v.to_bool().ok())
    }

    pub fn array(&self, key: &str) -> Result<&Vec<Value>> {
        self.required(key)?
            .to_vec()
            .map_err(|e| EngineError::bad_model(&self.path, format!("{key}: {e}")))
    }
}

/// GGUF writers are inconsistent about integer widths; accept any of them.
fn value_as_u64(value: &Value) -> Option<u64> {
    match value {
        Value::U8(v) => Some(u64::from(*v)),
        Value::I8(v) => u64::try_from(*v).ok(),
        Value::U16(v) => Some(u64::from(*v)),
        Value::I16(v) => u64::try_from(*v).ok(),
        Value::U32(v) => Some(u64::from(*v)),
        Value::I32(v) => u64::try_from(*v).ok(),
        Value::U64(v) => Some(*v),
        Value::I64(v) => u64::try_from(*v).ok(),
        _ => None,
    }
}
