//! `ChatModel`: a loaded chat model ready to serve — weights, tokenizer, chat template and
//! the scheduler thread that batches its requests.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::backend::cpu::CpuRunner;
use crate::backend::cuda::{CudaBackend, CudaLlama, KvBudget};
use crate::backend::{Device, ModelRunner};
use crate::error::{EngineError, Result};
use crate::formats::chat_template::{ChatMessage, ChatTemplate};
use crate::formats::gguf::GgufFile;
use crate::formats::gguf_tokenizer::tokenizer_from_gguf;
use crate::model::dense::DenseCheckpoint;
use crate::model::llama::LlamaModel;
use crate::scheduler::{
    GenerationRequest, GenerationStream, KvCapacity, Scheduler, SchedulerOptions, SchedulerStats,
};
use crate::tokenizer::{SpecialTokens, TextTokenizer};

/// Where a model's files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A single `.gguf` file; the tokenizer comes from its metadata.
    Gguf(PathBuf),
    /// A Hugging Face directory with `config.json`, `tokenizer.json`, `*.safetensors`.
    SafetensorsDir(PathBuf),
}

impl ModelSource {
    /// A `.gguf` file or a directory holding `config.json`.
    pub fn detect(path: &Path) -> Result<Self> {
        if path.is_dir() {
            if path.join("config.json").is_file() {
                Ok(Self::SafetensorsDir(path.to_path_buf()))
            } else {
                Err(EngineError::bad_model(path, "directory has no config.json"))
            }
        } else if path.is_file() {
            Ok(Self::Gguf(path.to_path_buf()))
        } else {
            Err(EngineError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
            })
        }
    }
}

/// Where a chat model runs and how large its KV cache is.
#[derive(Debug, Clone, Copy)]
pub struct Placement {
    pub device: Device,
    /// The KV cache's size on the CPU.
    pub kv_cache_bytes: usize,
    /// On CUDA, the share of the GPU's memory the model may take in all, weights and KV
    /// cache together (vLLM's `gpu_memory_utilization`).
    pub gpu_memory_utilization: f32,
}

impl Default for Placement {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            kv_cache_bytes: 1 << 30,
            gpu_memory_utilization: 0.9,
        }
    }
}

pub struct ChatModel {
    tokenizer: Arc<TextTokenizer>,
    template: ChatTemplate,
    scheduler: Scheduler,
    context_length: usize,
    device: Device,
}

impl ChatModel {
    pub fn load(
        source: &ModelSource,
        placement: Placement,
        options: SchedulerOptions,
    ) -> Result<Self> {
        let (runner, tokenizer, template_source) = match source {
            ModelSource::Gguf(path) => {
                let gguf = GgufFile::open(path)?;
                let tokenizer = tokenizer_from_gguf(&gguf)?;
                let template = gguf.string("tokenizer.chat_template").map(str::to_string);
                let runner = match placement.device {
                    Device::Cpu => cpu_runner(LlamaModel::from_gguf(&gguf)?, placement)?,
                    Device::Cuda(ordinal) => {
                        cuda_runner(&DenseCheckpoint::gguf(&gguf)?, ordinal, placement)?
                    }
                };
                (runner, tokenizer, template)
            }
            ModelSource::SafetensorsDir(dir) => {
                let (special, template) = hf_tokenizer_config(dir)?;
                let tokenizer = TextTokenizer::from_file(&dir.join("tokenizer.json"), special)?;
                let runner = match placement.device {
                    Device::Cpu => cpu_runner(LlamaModel::from_safetensors_dir(dir)?, placement)?,
                    Device::Cuda(ordinal) => {
                        cuda_runner(&DenseCheckpoint::safetensors(dir)?, ordinal, placement)?
                    }
                };
                (runner, tokenizer, template)
            }
        };
        let special = tokenizer.special().clone();
        let template = ChatTemplate::new(
            template_source,
            special.bos_text.unwrap_or_default(),
            special.eos_text.unwrap_or_default(),
        )?;
        let context_length = runner.config().context_length;
        let tokenizer = Arc::new(tokenizer);
        let scheduler = Scheduler::start(runner, tokenizer.clone(), options)?;
        Ok(Self {
            tokenizer,
            template,
            scheduler,
            context_length,
            device: placement.device,
        })
    }

    /// The device the model runs on.
    pub fn device(&self) -> Device {
        self.device
    }

    pub fn context_length(&self) -> usize {
        self.context_length
    }

    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }

    /// Renders the conversation with the model's chat template and tokenizes it.
    pub fn chat_prompt(&self, messages: &[ChatMessage]) -> Result<Vec<u32>> {
        let text = self.template.render(messages)?;
        self.tokenizer.encode_prompt(&text)
    }

    /// Tokenizes a raw completion prompt.
    pub fn text_prompt(&self, text: &str) -> Result<Vec<u32>> {
        self.tokenizer.encode_prompt(text)
    }

    /// The largest `max_new_tokens` a prompt of this length allows.
    pub fn room_after(&self, prompt_tokens: usize) -> usize {
        self.context_length.saturating_sub(prompt_tokens)
    }

    /// Queues a generation. The prompt plus `max_new_tokens` must fit the context window:
    /// nothing is ever truncated silently.
    pub fn generate(&self, request: GenerationRequest) -> Result<GenerationStream> {
        request.sampling.validate()?;
        if request.prompt.is_empty() {
            return Err(EngineError::InvalidParameter {
                param: "prompt",
                message: "the prompt is empty".into(),
            });
        }
        if request.max_new_tokens == 0 {
            return Err(EngineError::InvalidParameter {
                param: "max_tokens",
                message: "must be at least 1".into(),
            });
        }
        let requested = request.prompt.len().saturating_add(request.max_new_tokens);
        if requested > self.context_length {
            return Err(EngineError::ContextLengthExceeded {
                prompt: request.prompt.len(),
                max_new: request.max_new_tokens,
                requested,
                limit: self.context_length,
            });
        }
        self.scheduler.submit(request)
    }

    pub fn kv_capacity(&self) -> KvCapacity {
        self.scheduler.kv_capacity()
    }

    pub fn stats(&self) -> SchedulerStats {
        self.scheduler.stats()
    }

    /// Lets running generations finish for up to `grace`, then ends them.
    pub fn shutdown(&self, grace: Duration) {
        self.scheduler.shutdown(grace);
    }
}

fn cpu_runner(model: LlamaModel, placement: Placement) -> Result<Box<dyn ModelRunner>> {
    Ok(Box::new(CpuRunner::new(model, placement.kv_cache_bytes)?))
}

fn cuda_runner(
    checkpoint: &DenseCheckpoint<'_>,
    ordinal: usize,
    placement: Placement,
) -> Result<Box<dyn ModelRunner>> {
    let gpu = CudaBackend::open(ordinal)?;
    let kv = KvBudget::GpuMemoryUtilization(placement.gpu_memory_utilization);
    Ok(Box::new(CudaLlama::load(checkpoint, gpu, kv)?))
}

/// Special tokens and chat template from `tokenizer_config.json` (if present).
fn hf_tokenizer_config(dir: &Path) -> Result<(SpecialTokens, Option<String>)> {
    let path = dir.join("tokenizer_config.json");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok((SpecialTokens::default(), None));
    };
    let config: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| EngineError::bad_model(&path, format!("tokenizer_config.json: {e}")))?;
    // Tokens are either plain strings or `{"content": ...}` objects.
    let token_text = |key: &str| -> Option<String> {
        match config.get(key)? {
            serde_json::Value::String(s) => Some(s.clone()),
            other => other.get("content")?.as_str().map(str::to_string),
        }
    };
    let template = config
        .get("chat_template")
        .and_then(|t| t.as_str())
        .map(str::to_string);
    let tokenizer = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json"))
        .map_err(|e| EngineError::bad_model(dir, format!("tokenizer.json: {e}")))?;
    let bos_text = token_text("bos_token");
    let eos_text = token_text("eos_token");
    let add_bos = config
        .get("add_bos_token")
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    let mut end_of_turn: Vec<u32> = eos_text
        .iter()
        .chain(["<|im_end|>".to_string(), "<|eot_id|>".to_string()].iter())
        .filter_map(|t| tokenizer.token_to_id(t))
        .collect();
    end_of_turn.sort_unstable();
    end_of_turn.dedup();
    let special = SpecialTokens {
        bos: bos_text
            .as_deref()
            .and_then(|t| tokenizer.token_to_id(t))
            .filter(|_| add_bos),
        bos_text,
        eos_text,
        end_of_turn,
    };
    Ok((special, template))
}
