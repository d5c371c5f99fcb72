//! The two embedders: BM25 (lexical, needs nothing) and all-MiniLM-L6-v2
//! (dense, run in process with candle from a local model directory).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::bert::{Bert, BertConfig};
use qdrant_edge::bm25_embed::{EdgeBm25, EdgeBm25Config};
use tokenizers::{Tokenizer, TruncationParams};

use crate::IndexError;

/// The sparse vector name of the lexical embedder.
pub const BM25_VECTOR: &str = "bm25";
/// The dense vector name of the MiniLM embedder.
pub const MINILM_VECTOR: &str = "minilm";
/// MiniLM's output size.
pub const MINILM_DIM: usize = 384;

/// Events are short: BM25's length normalisation is relative to this.
const BM25_AVG_LEN: f64 = 24.0;
/// How the lexical embedder is identified in an index manifest. Bump it
/// whenever its tokenisation or weights change.
const BM25_ID: &str = "bm25-english-v1";
/// MiniLM sees at most this many tokens of an event.
const MINILM_MAX_TOKENS: usize = 256;
/// Texts per forward pass.
const MINILM_BATCH: usize = 16;

/// A sparse vector: sorted unique indices and their weights.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SparseVec {
    pub indices: Vec<u32>,
    pub values: Vec<f32>,
}

/// The vectors of one text, one per configured embedder.
#[derive(Clone, Debug, PartialEq)]
pub struct TextVectors {
    pub sparse: SparseVec,
    pub dense: Option<Vec<f32>>,
}

/// BM25 over Qdrant's English tokeniser (stop words, Snowball stemmer).
/// Documents carry term-frequency weights; the IDF half is the index's
/// (`Modifier::Idf` on the sparse vector).
#[derive(Debug)]
pub struct Lexical {
    bm25: EdgeBm25,
}

impl Lexical {
    pub fn new() -> Result<Self, IndexError> {
        let config = EdgeBm25Config {
            language: Some("english".to_owned()),
            avg_len: qdrant_edge::external::ordered_float::NotNan::new(BM25_AVG_LEN).map_err(
                |e| IndexError::Embed {
                    embedder: "bm25",
                    why: e.to_string(),
                },
            )?,
            ..Default::default()
        };
        let bm25 = EdgeBm25::new(config).map_err(|e| IndexError::Embed {
            embedder: "bm25",
            why: e.to_string(),
        })?;
        Ok(Lexical { bm25 })
    }

    pub fn document(&self, text: &str) -> SparseVec {
        let v = self.bm25.embed_document(text);
        SparseVec {
            indices: v.indices,
            values: v.values,
        }
    }

    pub fn query(&self, text: &str) -> SparseVec {
        let v = self.bm25.embed_query(text);
        SparseVec {
            indices: v.indices,
            values: v.values,
        }
    }
}

/// all-MiniLM-L6-v2: BERT, mean pooling over the real tokens (padding is
/// masked out), L2-normalised.
pub struct MiniLm {
    model: Bert,
    tokenizer: Tokenizer,
    id: String,
}

impl std::fmt::Debug for MiniLm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MiniLm").field("id", &self.id).finish()
    }
}

impl MiniLm {
    /// Loads `config.json`, `tokenizer.json` and `model.safetensors` from
    /// `dir` (what `scripts/fetch-model.sh` unpacks).
    pub fn load(dir: &Path) -> Result<Self, IndexError> {
        let model_err = |path: PathBuf, why: String| IndexError::Model { path, why };
        let config_path = dir.join("config.json");
        let config_text = std::fs::read_to_string(&config_path)
            .map_err(|e| model_err(config_path.clone(), e.to_string()))?;
        let config: BertConfig = serde_json::from_str(&config_text)
            .map_err(|e| model_err(config_path.clone(), e.to_string()))?;

        let tokenizer_path = dir.join("tokenizer.json");
        let mut tokenizer = Tokenizer::from_file(&tokenizer_path)
            .map_err(|e| model_err(tokenizer_path.clone(), e.to_string()))?;
        // The shipped tokenizer pads every input to 128 tokens: switch that
        // off; `embed_batch` pads to the longest of a batch and masks the
        // padding out of attention and pooling.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MINILM_MAX_TOKENS,
                ..Default::default()
            }))
            .map_err(|e| model_err(tokenizer_path.clone(), e.to_string()))?;

        let weights_path = dir.join("model.safetensors");
        let weights = std::fs::read(&weights_path)
            .map_err(|e| model_err(weights_path.clone(), e.to_string()))?;
        let digest = fschain_schema::Digest::of(&weights).to_hex();
        let id = format!("minilm-l6-v2:{}", &digest[..16]);
        let vb = VarBuilder::from_buffered_safetensors(weights, DType::F32, &Device::Cpu)
            .map_err(|e| model_err(weights_path.clone(), e.to_string()))?;
        let model = Bert::load(vb, &config).map_err(|e| model_err(weights_path, e.to_string()))?;
        Ok(MiniLm {
            model,
            tokenizer,
            id,
        })
    }

    /// Embeds texts; one unit vector of [`MINILM_DIM`] per text, in order.
    ///
    /// Texts are run through the model in small batches of equal token
    /// counts: nothing is padded (padding costs as much as real tokens, and
    /// changes the shape of the sums a text's vector comes from, so the
    /// same text in another batch would come out a few ulps apart: a
    /// site's index must rank exactly as the producer's), and small tensors
    /// stay in cache (batches of 256 spend most of their time faulting
    /// pages).
    pub fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, IndexError> {
        let err = |e: &dyn std::fmt::Display| IndexError::Embed {
            embedder: "minilm",
            why: e.to_string(),
        };
        let inputs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let encodings = self
            .tokenizer
            .encode_batch(inputs, true)
            .map_err(|e| err(&e))?;
        let mut by_len: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
        for (i, e) in encodings.iter().enumerate() {
            by_len.entry(e.get_ids().len()).or_default().push(i);
        }
        let mut out = vec![Vec::new(); encodings.len()];
        for group in by_len.values().flat_map(|same| same.chunks(MINILM_BATCH)) {
            let batch: Vec<(&[u32], &[u32])> = group
                .iter()
                .map(|&i| (encodings[i].get_ids(), encodings[i].get_attention_mask()))
                .collect();
            let vectors = self.embed_batch(&batch).map_err(|e| err(&e))?;
            for (&i, v) in group.iter().zip(vectors) {
                out[i] = v;
            }
        }
        Ok(out)
    }

    /// One forward pass: token ids and masks (of one length, so no row is
    /// padded; a mask still covers any that were).
    fn embed_batch(&self, batch: &[(&[u32], &[u32])]) -> candle_core::Result<Vec<Vec<f32>>> {
        let len = batch.iter().map(|(ids, _)| ids.len()).max().unwrap_or(0);
        let rows = batch.len();
        let mut ids = vec![0u32; rows * len];
        let mut mask = vec![0u32; rows * len];
        for (r, (row_ids, row_mask)) in batch.iter().enumerate() {
            ids[r * len..r * len + row_ids.len()].copy_from_slice(row_ids);
            mask[r * len..r * len + row_mask.len()].copy_from_slice(row_mask);
        }
        let device = &Device::Cpu;
        let ids = Tensor::from_vec(ids, (rows, len), device)?;
        let mask = Tensor::from_vec(mask, (rows, len), device)?;
        let hidden = self.model.forward(&ids, &mask)?;
        // Mean over real tokens only, then L2 normalisation.
        let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
        let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
        let counts = mask.sum(1)?.clamp(1e-9f32, f32::MAX)?;
        let mean = summed.broadcast_div(&counts)?;
        let norm = mean
            .sqr()?
            .sum_keepdim(1)?
            .sqrt()?
            .clamp(1e-12f32, f32::MAX)?;
        mean.broadcast_div(&norm)?.to_vec2::<f32>()
    }
}

/// The embedders an index is built and searched with: BM25 always, MiniLM
/// when a model directory is configured.
#[derive(Debug)]
pub struct Embedders {
    pub lexical: Lexical,
    pub minilm: Option<MiniLm>,
}

impl Embedders {
    pub fn new(model_dir: Option<&Path>) -> Result<Self, IndexError> {
        Ok(Embedders {
            lexical: Lexical::new()?,
            minilm: model_dir.map(MiniLm::load).transpose()?,
        })
    }

    /// What the index manifest records: a change here means `reindex`.
    pub fn ids(&self) -> Vec<String> {
        let mut ids = vec![BM25_ID.to_owned()];
        if let Some(m) = &self.minilm {
            ids.push(m.id.clone());
        }
        ids
    }

    /// The vectors of documents: `lexical[i]` for BM25 and `natural[i]`
    /// for MiniLM are two renderings of the same event.
    pub fn documents(
        &self,
        lexical: &[String],
        natural: &[String],
    ) -> Result<Vec<TextVectors>, IndexError> {
        let dense = match &self.minilm {
            Some(m) => m.embed(natural)?.into_iter().map(Some).collect(),
            None => vec![None; lexical.len()],
        };
        Ok(lexical
            .iter()
            .zip(dense)
            .map(|(t, dense)| TextVectors {
                sparse: self.lexical.document(t),
                dense,
            })
            .collect())
    }

    pub fn query(&self, text: &str) -> Result<TextVectors, IndexError> {
        let dense = match &self.minilm {
            Some(m) => m.embed(&[text.to_owned()])?.pop(),
            None => None,
        };
        Ok(TextVectors {
            sparse: self.lexical.query(text),
            dense,
        })
    }
}
