//! Builds a tokenizer from the vocabulary stored in GGUF metadata, the way llama.cpp does:
//! GPT-2 style byte-level BPE (`tokenizer.ggml.model = gpt2`) with the pre-tokenizer named by
//! `tokenizer.ggml.pre`, or SentencePiece-style BPE (`llama`) with merges derived from scores.

use std::collections::HashMap;

use tokenizers::decoders::DecoderWrapper;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::{NormalizerWrapper, Prepend, Replace};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use crate::error::{EngineError, Result};
use crate::formats::gguf::GgufFile;
use crate::tokenizer::{SpecialTokens, TextTokenizer};

/// llama.cpp's token types (`tokenizer.ggml.token_type`).
const TOKEN_TYPE_CONTROL: i32 = 3;
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

const GPT2_REGEX: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
const LLAMA3_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

pub fn tokenizer_from_gguf(gguf: &GgufFile) -> Result<TextTokenizer> {
    let bad = |message: String| EngineError::bad_model(gguf.path(), message);
    let model = gguf.required_string("tokenizer.ggml.model")?;
    let tokens: Vec<String> = gguf
        .array("tokenizer.ggml.tokens")?
        .iter()
        .map(|v| v.to_string().cloned())
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| bad(format!("tokenizer.ggml.tokens: {e}")))?;
    let token_types: Vec<i32> = match gguf.value("tokenizer.ggml.token_type") {
        Some(v) => v
            .to_vec()
            .and_then(|vs| vs.iter().map(|v| v.to_i32()).collect())
            .map_err(|e| bad(format!("tokenizer.ggml.token_type: {e}")))?,
        None => vec![1; tokens.len()],
    };
    let mut vocab: HashMap<String, u32> = HashMap::with_capacity(tokens.len());
    for (id, token) in tokens.iter().enumerate() {
        vocab.entry(token.clone()).or_insert(id as u32);
    }

    let mut tokenizer = match model {
        "gpt2" => {
            let merges = gguf
                .array("tokenizer.ggml.merges")?
                .iter()
                .map(|v| {
                    let merge = v.to_string().map_err(|e| bad(format!("merges: {e}")))?;
                    merge
                        .split_once(' ')
                        .map(|(a, b)| (a.to_string(), b.to_string()))
                        .ok_or_else(|| bad(format!("malformed merge {merge:?}")))
                })
                .collect::<Result<Vec<_>>>()?;
            let pre = gguf.string("tokenizer.ggml.pre").unwrap_or("default");
            let bpe = BPE::builder()
                .vocab_and_merges(bpe_vocab(&vocab), merges)
                .ignore_merges(matches!(pre, "llama3" | "llama-v3" | "llama-bpe"))
                .build()
                .map_err(|e| bad(format!("building BPE: {e}")))?;
            let mut tokenizer = Tokenizer::new(bpe);
            tokenizer.with_pre_tokenizer(Some(byte_level_pre_tokenizer(pre)?));
            tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
            tokenizer
        }
        "llama" => {
            let scores: Vec<f32> = gguf
                .array("tokenizer.ggml.scores")?
                .iter()
                .map(|v| v.to_f32())
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| bad(format!("tokenizer.ggml.scores: {e}")))?;
            let merges = sentencepiece_merges(&tokens, &scores, &vocab);
            let unk = gguf
                .u32("tokenizer.ggml.unknown_token_id")
                .and_then(|id| tokens.get(id as usize).cloned())
                .unwrap_or_else(|| "<unk>".to_string());
            let bpe = BPE::builder()
                .vocab_and_merges(bpe_vocab(&vocab), merges)
                .unk_token(unk)
                .fuse_unk(true)
                .byte_fallback(true)
                .build()
                .map_err(|e| bad(format!("building BPE: {e}")))?;
            let mut tokenizer = Tokenizer::new(bpe);
            let add_space_prefix = gguf.bool("tokenizer.ggml.add_space_prefix").unwrap_or(true);
            let mut normalizers: Vec<NormalizerWrapper> = Vec::new();
            if add_space_prefix {
                normalizers.push(Prepend::new("▁".to_string()).into());
            }
            normalizers.push(
                Replace::new(" ", "▁")
                    .map_err(|e| bad(format!("normalizer: {e}")))?
                    .into(),
            );
            tokenizer
                .with_normalizer(Some(tokenizers::normalizers::Sequence::new(normalizers)))
                .map_err(|e| bad(format!("normalizer: {e}")))?;
            let decoders: Vec<DecoderWrapper> = vec![
                Replace::new("▁", " ")
                    .map_err(|e| bad(format!("decoder: {e}")))?
                    .into(),
                ByteFallback::new().into(),
                Fuse::new().into(),
                Strip::new(' ', usize::from(add_space_prefix), 0).into(),
            ];
            tokenizer.with_decoder(Some(DecoderSequence::new(decoders)));
            tokenizer
        }
        other => return Err(bad(format!("unsupported tokenizer model {other:?}"))),
    };

    let byte_level = model == "gpt2";
    let added: Vec<AddedToken> = tokens
        .iter()
        .zip(&token_types)
        .filter(|(_, ty)| matches!(**ty, TOKEN_TYPE_CONTROL | TOKEN_TYPE_USER_DEFINED))
        .map(|(token, ty)| {
            let content = if byte_level {
                byte_level_to_text(token)
            } else {
                token.clone()
            };
            AddedToken::from(content, *ty == TOKEN_TYPE_CONTROL).normalized(false)
        })
        .collect();
    tokenizer
        .add_special_tokens(added)
        .map_err(|e| bad(format!("adding special tokens: {e}")))?;

    let token_id = |key: &str| gguf.u32(key).filter(|id| (*id as usize) < tokens.len());
    let bos = token_id("tokenizer.ggml.bos_token_id");
    let eos = token_id("tokenizer.ggml.eos_token_id");
    let mut end_of_turn: Vec<u32> = [eos, token_id("tokenizer.ggml.eot_token_id")]
        .into_iter()
        .flatten()
        .collect();
    // llama.cpp also treats these well-known end-of-turn markers as EOG tokens.
    for marker in [
        "<|im_end|>",
        "<|eot_id|>",
        "<|end_of_text|>",
        "<|endoftext|>",
        "<end_of_turn>",
        "<|end|>",
        "</s>",
    ] {
        if let Some(&id) = vocab.get(marker) {
            end_of_turn.push(id);
        }
    }
    end_of_turn.sort_unstable();
    end_of_turn.dedup();
    let add_bos = gguf
        .bool("tokenizer.ggml.add_bos_token")
        .unwrap_or(model == "llama");
    let name = |id: Option<u32>| id.and_then(|id| tokens.get(id as usize).cloned());
    Ok(TextTokenizer::new(
        tokenizer,
        SpecialTokens {
            bos: bos.filter(|_| add_bos),
            bos_text: name(bos),
            eos_text: name(eos),
            end_of_turn,
        },
    ))
}

fn bpe_vocab(vocab: &HashMap<String, u32>) -> tokenizers::models::bpe::Vocab {
    vocab
        .iter()
        .map(|(token, id)| (token.clone(), *id))
        .collect()
}

fn byte_level_pre_tokenizer(pre: &str) -> Result<PreTokenizerWrapper> {
    let split = |regex: &str| -> Result<PreTokenizerWrapper> {
        Split::new(
            SplitPattern::Regex(regex.to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map(Into::into)
        .map_err(|e| EngineError::Tokenizer(format!("pre-tokenizer regex: {e}")))
    };
    let byte_level_only = ByteLevel::new(false, false, false).into();
    let pieces = match pre {
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva" => {
            vec![split(r"\p{N}")?, ByteLevel::new(false, false, true).into()]
        }
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" => {
            vec![split(LLAMA3_REGEX)?, byte_level_only]
        }
        "qwen2" | "deepseek-r1-qwen" => vec![split(QWEN2_REGEX)?, byte_level_only],
        _ => vec![split(GPT2_REGEX)?, byte_level_only],
    };
    Ok(PreTokenizerSequence::new(pieces).into())
}

/// Maps GPT-2's byte-level alphabet back to the text it stands for.
fn byte_level_to_text(token: &str) -> String {
    let decoder = byte_level_alphabet_inverse();
    let bytes: Vec<u8> = token
        .chars()
        .map(|c| decoder.get(&c).copied().unwrap_or(b'?'))
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

fn byte_level_alphabet_inverse() -> HashMap<char, u8> {
    let mut printable: Vec<u8> = (b'!'..=b'~').collect();
    printable.extend(0xA1..=0xAC);
    printable.extend(0xAE..=0xFF);
    let mut map = HashMap::with_capacity(256);
    let mut extra = 0u32;
    for byte in 0..=255u8 {
        let ch = if printable.contains(&byte) {
            char::from(byte)
        } else {
            extra += 1;
            char::from_u32(255 + extra).unwrap_or('?')
        };
        map.insert(ch, byte);
    }
    map
}

/// SentencePiece GGUFs carry scores, not merges. As in Hugging Face's converter, every
/// split of a vocabulary piece into two vocabulary pieces is a merge, ranked by the score
/// of the merged piece.
fn sentencepiece_merges(
    tokens: &[String],
    scores: &[f32],
    vocab: &HashMap<String, u32>,
) -> Vec<(String, String)> {
    let mut ranked: Vec<(f32, u32, u32, String, String)> = Vec::new();
    for (id, piece) in tokens.iter().enumerate() {
        let score = scores.get(id).copied().unwrap_or(0.0);
        for (split, _) in piece.char_indices().skip(1) {
            let (left, right) = piece.split_at(split);
            if let (Some(&l), Some(&r)) = (vocab.get(left), vocab.get(right)) {
                ranked.push((score, l, r, left.to_string(), right.to_string()));
            }
        }
    }
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    ranked.into_iter().map(|(_, _, _, l, r)| (l, r)).collect()
}
