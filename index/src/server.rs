//! A Qdrant server through qdrant-client: the same points, vectors,
//! payload indexes and queries as the in-process backend, one collection
//! per chain. The client is async; this adapter runs it on a small runtime
//! of its own so the rest of fschain stays synchronous.

use std::time::Duration;

use qdrant_client::qdrant::{
    Condition, CreateCollectionBuilder, CreateFieldIndexCollectionBuilder, DeleteCollectionBuilder,
    Distance, FieldType, Filter, Modifier, NamedVectors, PointStruct, Query, QueryPointsBuilder,
    Range, SearchParamsBuilder, SparseVectorParamsBuilder, SparseVectorsConfigBuilder,
    UpsertPointsBuilder, Vector, VectorInput, VectorParamsBuilder, VectorsConfigBuilder,
};
use qdrant_client::{Payload, Qdrant, QdrantError};
use qdrant_edge::external::uuid::Uuid;
use serde_json::Value;

use crate::backend::{
    dense_vector, query_for, Backend, Embedder, FilterCondition, IndexPoint, ScoredPayload,
    SearchFilter,
};
use crate::document::fields;
use crate::embed::{TextVectors, BM25_VECTOR, MINILM_DIM, MINILM_VECTOR};
use crate::IndexError;

/// Where a Qdrant server is and how to reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// The gRPC address, e.g. `http://localhost:6334`.
    pub url: String,
    pub api_key: Option<String>,
    /// Collections are named `<prefix><chain>`; give each site its own
    /// prefix when sites share a server.
    pub collection_prefix: String,
}

/// One chain's collection on a Qdrant server.
pub struct ServerBackend {
    client: Qdrant,
    runtime: tokio::runtime::Runtime,
    url: String,
    collection: String,
    dense: bool,
}

impl std::fmt::Debug for ServerBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerBackend")
            .field("url", &self.url)
            .field("collection", &self.collection)
            .finish()
    }
}

impl ServerBackend {
    /// Connects and opens `collection`, creating it (vectors, payload
    /// indexes) when it is not there; with `fresh`, an existing one is
    /// deleted first.
    pub fn open(
        config: &ServerConfig,
        collection: &str,
        dense: bool,
        fresh: bool,
    ) -> Result<Self, IndexError> {
        let (runtime, client) = connect(config)?;
        let backend = ServerBackend {
            client,
            runtime,
            url: config.url.clone(),
            collection: collection.to_owned(),
            dense,
        };
        backend.prepare(fresh)?;
        Ok(backend)
    }

    /// Whether the server answers, before anything is changed for it.
    pub fn check(config: &ServerConfig) -> Result<(), IndexError> {
        let (runtime, client) = connect(config)?;
        runtime
            .block_on(client.health_check())
            .map(|_| ())
            .map_err(|e| server_error(&config.url, "(health check)", e))
    }

    fn error(&self, e: QdrantError) -> IndexError {
        server_error(&self.url, &self.collection, e)
    }

    fn prepare(&self, fresh: bool) -> Result<(), IndexError> {
        let name = self.collection.as_str();
        self.runtime
            .block_on(async {
                let exists = self.client.collection_exists(name).await?;
                if exists && !fresh {
                    return Ok(());
                }
                if exists {
                    self.client
                        .delete_collection(DeleteCollectionBuilder::new(name))
                        .await?;
                }
                let mut sparse = SparseVectorsConfigBuilder::default();
                sparse.add_named_vector_params(
                    BM25_VECTOR,
                    SparseVectorParamsBuilder::default().modifier(Modifier::Idf),
                );
                let mut create = CreateCollectionBuilder::new(name).sparse_vectors_config(sparse);
                if self.dense {
                    let mut dense = VectorsConfigBuilder::default();
                    dense.add_named_vector_params(
                        MINILM_VECTOR,
                        VectorParamsBuilder::new(MINILM_DIM as u64, Distance::Cosine),
                    );
                    create = create.vectors_config(dense);
                }
                self.client.create_collection(create).await?;
                let indexes = fields::KEYWORDS
                    .iter()
                    .map(|f| (*f, FieldType::Keyword))
                    .chain(fields::INTEGERS.iter().map(|f| (*f, FieldType::Integer)));
                for (field, kind) in indexes {
                    self.client
                        .create_field_index(
                            CreateFieldIndexCollectionBuilder::new(name, field, kind).wait(true),
                        )
                        .await?;
                }
                Ok(())
            })
            .map_err(|e| self.error(e))
    }
}

fn connect(config: &ServerConfig) -> Result<(tokio::runtime::Runtime, Qdrant), IndexError> {
    let err = |e: &dyn std::fmt::Display| IndexError::Qdrant {
        backend: format!("server {}", config.url),
        message: e.to_string(),
        transient: false,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| err(&e))?;
    let client = Qdrant::from_url(&config.url)
        .api_key(config.api_key.clone())
        .timeout(Duration::from_secs(30))
        .connect_timeout(Duration::from_secs(5))
        .skip_compatibility_check()
        .build()
        .map_err(|e| err(&e))?;
    Ok((runtime, client))
}

fn server_error(url: &str, collection: &str, e: QdrantError) -> IndexError {
    let transient = match &e {
        QdrantError::ResponseError { status } => matches!(
            status.code(),
            tonic::Code::Unavailable
                | tonic::Code::DeadlineExceeded
                | tonic::Code::Aborted
                | tonic::Code::ResourceExhausted
        ),
        QdrantError::ResourceExhaustedError { .. } | QdrantError::Io(_) => true,
        _ => false,
    };
    IndexError::Qdrant {
        backend: format!("server {url} collection {collection}"),
        message: e.to_string(),
        transient,
    }
}

fn server_filter(filter: &SearchFilter) -> Option<Filter> {
    let must: Vec<Condition> = filter
        .conditions()
        .into_iter()
        .map(|c| match c {
            FilterCondition::Keyword(key, value) => Condition::matches(key, value.to_owned()),
            FilterCondition::Range(key, gte, lte) => Condition::range(
                key,
                Range {
                    gte,
                    lte,
                    ..Default::default()
                },
            ),
        })
        .collect();
    (!must.is_empty()).then(|| Filter::must(must))
}

impl Backend for ServerBackend {
    fn upsert(&mut self, points: Vec<IndexPoint>) -> Result<(), IndexError> {
        let mut batch = Vec::with_capacity(points.len());
        for mut p in points {
            let mut named = NamedVectors::default();
            if self.dense {
                named = named.add_vector(MINILM_VECTOR, Vector::new_dense(dense_vector(&mut p)?));
            }
            named = named.add_vector(
                BM25_VECTOR,
                Vector::new_sparse(p.vectors.sparse.indices, p.vectors.sparse.values),
            );
            let payload = Payload::try_from(p.payload).map_err(|e| self.error(e))?;
            batch.push(PointStruct::new(
                Uuid::from_bytes(p.id).to_string(),
                named,
                payload,
            ));
        }
        // `wait`: the server has applied (and logged) the points when this
        // returns, so `flush` has nothing left to do.
        let request = UpsertPointsBuilder::new(&self.collection, batch).wait(true);
        self.runtime
            .block_on(self.client.upsert_points(request))
            .map(|_| ())
            .map_err(|e| self.error(e))
    }

    fn search(
        &self,
        query: &TextVectors,
        embedder: Embedder,
        filter: &SearchFilter,
        limit: usize,
    ) -> Result<Vec<ScoredPayload>, IndexError> {
        let filter = server_filter(filter);
        let sparse =
            VectorInput::new_sparse(query.sparse.indices.clone(), query.sparse.values.clone());
        let dense = match (&query.dense, self.dense) {
            (Some(d), true) => Some(VectorInput::new_dense(d.clone())),
            _ => None,
        };
        let request = QueryPointsBuilder::new(&self.collection)
            .limit(limit as u64)
            .with_payload(true);
        let single = |(input, using): (VectorInput, &str)| {
            let r = request
                .clone()
                .query(Query::new_nearest(input))
                .using(using);
            match &filter {
                Some(f) => r.filter(f.clone()),
                None => r,
            }
        };
        let sparse = (sparse, BM25_VECTOR);
        let mut request = single(query_for(
            embedder,
            sparse,
            dense.map(|d| (d, MINILM_VECTOR)),
        )?);
        if embedder == Embedder::MiniLm {
            request = request.params(SearchParamsBuilder::default().exact(true));
        }
        let response = self
            .runtime
            .block_on(self.client.query(request))
            .map_err(|e| self.error(e))?;
        Ok(response
            .result
            .into_iter()
            .map(|p| ScoredPayload {
                score: p.score,
                payload: Value::from(Payload::from(p.payload)),
            })
            .collect())
    }

    fn flush(&mut self) -> Result<(), IndexError> {
        Ok(())
    }
}
