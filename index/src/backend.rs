//! Where the vectors live: qdrant-edge in process (the default) behind a
//! small trait, so a Qdrant server can stand in for it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use qdrant_edge::external::ordered_float::OrderedFloat;
use qdrant_edge::external::uuid::Uuid;
use qdrant_edge::{
    Condition, CreateIndex, Distance, EdgeConfig, EdgeShard, EdgeSparseVectorParams,
    EdgeVectorParams, FieldCondition, FieldIndexOperations, Filter, JsonPath, Match, Modifier,
    NamedQuery, PayloadFieldSchema, PayloadSchemaType, PointId, PointInsertOperations,
    PointOperations, PointStruct, QueryEnum, QueryRequest, Range, ScoringQuery, SearchParams,
    UpdateOperation, ValueVariants, Vector, VectorInternal, Vectors, WithPayloadInterface,
    WithVector,
};
use serde_json::Value;

use crate::document::fields;
use crate::embed::{SparseVec, TextVectors, BM25_VECTOR, MINILM_DIM, MINILM_VECTOR};
use crate::IndexError;

/// A point to store: its id (from the event hash), vectors and payload.
#[derive(Clone, Debug)]
pub struct IndexPoint {
    pub id: [u8; 16],
    pub vectors: TextVectors,
    pub payload: Value,
}

/// What a search may be narrowed to.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SearchFilter {
    pub element: Option<String>,
    pub kind: Option<String>,
    /// Only events sealed at or below this height.
    pub max_height: Option<u64>,
    pub since_us: Option<i64>,
    pub until_us: Option<i64>,
}

/// One condition of a [`SearchFilter`], for a backend to spell its way.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum FilterCondition<'a> {
    /// The keyword field equals the value.
    Keyword(&'static str, &'a str),
    /// The numeric field is within the bounds (inclusive).
    Range(&'static str, Option<f64>, Option<f64>),
}

impl SearchFilter {
    /// Every condition a point must meet (none: no filter).
    pub(crate) fn conditions(&self) -> Vec<FilterCondition<'_>> {
        let mut must = Vec::new();
        if let Some(e) = &self.element {
            must.push(FilterCondition::Keyword(fields::ELEMENT, e));
        }
        if let Some(k) = &self.kind {
            must.push(FilterCondition::Keyword(fields::KIND, k));
        }
        if let Some(h) = self.max_height {
            must.push(FilterCondition::Range(fields::HEIGHT, None, Some(h as f64)));
        }
        if self.since_us.is_some() || self.until_us.is_some() {
            must.push(FilterCondition::Range(
                fields::TIME_MICROS,
                self.since_us.map(|t| t as f64),
                self.until_us.map(|t| t as f64),
            ));
        }
        must
    }
}

/// Which embedders rank a search.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Ranking {
    /// Every embedder of the index; two are fused by reciprocal rank fusion.
    #[default]
    Fused,
    Bm25,
    MiniLm,
}

/// One embedder's ranking, as a backend searches it ([`Ranking::Fused`]
/// is fused above the backends, in [`crate::fusion`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Embedder {
    Bm25,
    MiniLm,
}

/// A hit as a backend returns it.
#[derive(Clone, Debug)]
pub struct ScoredPayload {
    pub score: f32,
    pub payload: Value,
}

/// The one thing fschain needs from a vector store.
pub trait Backend {
    /// Inserts or overwrites points (same id, same point).
    fn upsert(&mut self, points: Vec<IndexPoint>) -> Result<(), IndexError>;
    /// The best `limit` points for the query by one embedder's vectors.
    /// MiniLM's nearest neighbours are searched exactly, so that a rebuilt
    /// index answers as the one it replaces.
    fn search(
        &self,
        query: &TextVectors,
        embedder: Embedder,
        filter: &SearchFilter,
        limit: usize,
    ) -> Result<Vec<ScoredPayload>, IndexError>;
    /// Makes everything upserted durable.
    fn flush(&mut self) -> Result<(), IndexError>;
    /// Seals what has piled up into indexed segments, where the backend
    /// leaves that to its caller.
    fn optimize(&self) -> Result<(), IndexError> {
        Ok(())
    }
}

/// The query vector `embedder` ranks with: the sparse one always, the
/// dense one when the index and the query have it.
pub(crate) fn query_for<Q>(
    embedder: Embedder,
    sparse: Q,
    dense: Option<Q>,
) -> Result<Q, IndexError> {
    match (embedder, dense) {
        (Embedder::Bm25, _) => Ok(sparse),
        (Embedder::MiniLm, Some(dense)) => Ok(dense),
        (Embedder::MiniLm, None) => Err(IndexError::Embed {
            embedder: "minilm",
            why: "this index has no MiniLM vectors; reindex with --model DIR".into(),
        }),
    }
}

/// A point's dense vector, which every point of a MiniLM index has.
pub(crate) fn dense_vector(point: &mut IndexPoint) -> Result<Vec<f32>, IndexError> {
    point.vectors.dense.take().ok_or_else(|| IndexError::Embed {
        embedder: "minilm",
        why: "no dense vector for a point of a MiniLM index".into(),
    })
}

/// How many candidates each embedder contributes before fusion.
pub(crate) fn prefetch_limit(limit: usize) -> usize {
    (limit * 4).max(40)
}

/// qdrant-edge: the Qdrant engine in this process, stored in a directory.
#[derive(Debug)]
pub struct EdgeBackend {
    shard: EdgeShard,
    path: PathBuf,
    dense: bool,
}

impl EdgeBackend {
    /// Opens the shard at `path`, creating it (with payload indexes) if it
    /// is not there.
    pub fn open(path: &Path, dense: bool) -> Result<Self, IndexError> {
        let err = |e: &dyn std::fmt::Display| qdrant_error(path, e);
        let exists = path.join("edge_config.json").exists();
        std::fs::create_dir_all(path).map_err(|e| err(&e))?;
        let config = edge_config(dense);
        let shard = if exists {
            EdgeShard::load(path, Some(config)).map_err(|e| err(&e))?
        } else {
            let shard = EdgeShard::new(path, config).map_err(|e| err(&e))?;
            for (field, kind) in fields::KEYWORDS
                .iter()
                .map(|f| (*f, PayloadSchemaType::Keyword))
                .chain(
                    fields::INTEGERS
                        .iter()
                        .map(|f| (*f, PayloadSchemaType::Integer)),
                )
            {
                shard
                    .update(UpdateOperation::FieldIndexOperation(
                        FieldIndexOperations::CreateIndex(CreateIndex {
                            field_name: json_path(field)?,
                            field_schema: Some(PayloadFieldSchema::FieldType(kind)),
                        }),
                    ))
                    .map_err(|e| err(&e))?;
            }
            shard
        };
        Ok(EdgeBackend {
            shard,
            path: path.to_owned(),
            dense,
        })
    }
}

fn edge_config(dense: bool) -> EdgeConfig {
    let mut vectors = HashMap::new();
    if dense {
        vectors.insert(
            MINILM_VECTOR.to_owned(),
            EdgeVectorParams {
                size: MINILM_DIM,
                distance: Distance::Cosine,
                on_disk: None,
                multivector_config: None,
                datatype: None,
                quantization_config: None,
                hnsw_config: None,
            },
        );
    }
    EdgeConfig {
        vectors,
        sparse_vectors: HashMap::from([(
            BM25_VECTOR.to_owned(),
            EdgeSparseVectorParams {
                modifier: Some(Modifier::Idf),
                ..Default::default()
            },
        )]),
        ..Default::default()
    }
}

fn qdrant_error(path: &Path, e: &dyn std::fmt::Display) -> IndexError {
    IndexError::Qdrant {
        backend: format!("edge {}", path.display()),
        message: e.to_string(),
        transient: false,
    }
}

fn sparse_vector(v: &SparseVec) -> Result<Vector, qdrant_edge::OperationError> {
    Vector::new_sparse(v.indices.clone(), v.values.clone())
}

impl Backend for EdgeBackend {
    fn upsert(&mut self, points: Vec<IndexPoint>) -> Result<(), IndexError> {
        let err = |e: &dyn std::fmt::Display| qdrant_error(&self.path, e);
        let mut batch = Vec::with_capacity(points.len());
        for mut p in points {
            let mut named = vec![(
                BM25_VECTOR,
                sparse_vector(&p.vectors.sparse).map_err(|e| err(&e))?,
            )];
            if self.dense {
                named.push((MINILM_VECTOR, Vector::new_dense(dense_vector(&mut p)?)));
            }
            batch.push(
                PointStruct::new(
                    PointId::Uuid(Uuid::from_bytes(p.id)),
                    Vectors::new_named(named),
                    p.payload,
                )
                .into(),
            );
        }
        self.shard
            .update(UpdateOperation::PointOperation(
                PointOperations::UpsertPoints(PointInsertOperations::PointsList(batch)),
            ))
            .map_err(|e| err(&e))
    }

    fn search(
        &self,
        query: &TextVectors,
        embedder: Embedder,
        filter: &SearchFilter,
        limit: usize,
    ) -> Result<Vec<ScoredPayload>, IndexError> {
        let filter = edge_filter(filter)?;
        let single = |q| QueryRequest {
            prefetches: vec![],
            query: Some(ScoringQuery::Vector(q)),
            filter: filter.clone(),
            score_threshold: None,
            limit,
            offset: 0,
            params: None,
            with_vector: WithVector::Bool(false),
            with_payload: WithPayloadInterface::Bool(true),
        };
        let sparse = QueryEnum::Nearest(NamedQuery {
            query: VectorInternal::from(
                qdrant_edge::SparseVector::new(
                    query.sparse.indices.clone(),
                    query.sparse.values.clone(),
                )
                .map_err(|e| qdrant_error(&self.path, &e))?,
            ),
            using: Some(BM25_VECTOR.to_owned()),
        });
        let dense = match (&query.dense, self.dense) {
            (Some(dense), true) => Some(QueryEnum::Nearest(NamedQuery {
                query: VectorInternal::from(dense.clone()),
                using: Some(MINILM_VECTOR.to_owned()),
            })),
            _ => None,
        };
        let mut request = single(query_for(embedder, sparse, dense)?);
        if embedder == Embedder::MiniLm {
            request.params = Some(SearchParams {
                exact: true,
                ..SearchParams::default()
            });
        }
        let points = self
            .shard
            .query(request)
            .map_err(|e| qdrant_error(&self.path, &e))?;
        Ok(points
            .into_iter()
            .map(|p| ScoredPayload {
                score: p.score,
                payload: Value::Object(p.payload.map(|p| p.0).unwrap_or_default()),
            })
            .collect())
    }

    fn flush(&mut self) -> Result<(), IndexError> {
        self.shard.flush();
        Ok(())
    }

    /// Builds the vector indexes (HNSW for dense vectors) once enough
    /// points have arrived; cheap when there is nothing to do.
    fn optimize(&self) -> Result<(), IndexError> {
        self.shard
            .optimize()
            .map(|_| ())
            .map_err(|e| qdrant_error(&self.path, &e))
    }
}

fn json_path(key: &str) -> Result<JsonPath, IndexError> {
    JsonPath::try_from(key).map_err(|()| IndexError::Qdrant {
        backend: "edge".into(),
        message: format!("{key:?} is not a payload path"),
        transient: false,
    })
}

fn edge_filter(filter: &SearchFilter) -> Result<Option<Filter>, IndexError> {
    let must = filter
        .conditions()
        .into_iter()
        .map(|c| {
            Ok(Condition::Field(match c {
                FilterCondition::Keyword(key, value) => FieldCondition::new_match(
                    json_path(key)?,
                    Match::new_value(ValueVariants::String(value.to_owned())),
                ),
                FilterCondition::Range(key, gte, lte) => FieldCondition::new_range(
                    json_path(key)?,
                    Range {
                        lt: None,
                        gt: None,
                        gte: gte.map(OrderedFloat),
                        lte: lte.map(OrderedFloat),
                    },
                ),
            }))
        })
        .collect::<Result<Vec<_>, IndexError>>()?;
    Ok((!must.is_empty()).then(|| Filter {
        must: Some(must),
        ..Default::default()
    }))
}
