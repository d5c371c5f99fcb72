//! Fusion of two rankings (relative score fusion), done here rather than in
//! the vector store so that its answer depends on the scores alone.
//!
//! A store's own fusion ranks candidates in the order its storage returns
//! equal scores, and a rebuilt index (`reindex`, a site's copy) stores
//! them in another order: the fused order changed with it. Here each
//! ranking's scores are scaled to [0, 1] over its candidates, weighted and
//! summed; candidates whose presence depends on that order (a run of equal
//! scores at a list's cut) are left out, and the fused list is ordered by
//! score, then newest first.

use std::collections::BTreeMap;

use crate::backend::ScoredPayload;
use crate::document::fields;

/// One ranking to fuse: its hits (as many as were asked for, `asked`)
/// and its weight.
#[derive(Debug, Clone, Copy)]
pub struct Ranked<'a> {
    pub hits: &'a [ScoredPayload],
    pub asked: usize,
    pub weight: f64,
}

/// The event's chain sequence: the key hits are fused by and the
/// tie-breaker (newest first).
pub fn chain_seq(hit: &ScoredPayload) -> Option<u64> {
    hit.payload.get(fields::CHAIN_SEQ).and_then(|v| v.as_u64())
}

/// Orders hits by score, then newest first: a total order for hits of
/// distinct events.
pub fn order(hits: &mut [ScoredPayload]) {
    hits.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then(chain_seq(b).cmp(&chain_seq(a)))
    });
}

/// The best `limit` of the fused rankings, each with its fused score.
pub fn fuse(rankings: &[Ranked<'_>], limit: usize) -> Vec<ScoredPayload> {
    let mut fused: BTreeMap<u64, (f64, ScoredPayload)> = BTreeMap::new();
    for ranked in rankings {
        let mut hits = ranked.hits.to_vec();
        hits.retain(|h| chain_seq(h).is_some());
        order(&mut hits);
        // A full list may have cut a run of equal scores anywhere: which
        // of them came back is the store's choice. Leave the run out,
        // unless it is all there is.
        if hits.len() >= ranked.asked {
            if let Some(last) = hits.last().map(|h| h.score) {
                let kept = hits.iter().filter(|h| h.score > last).count();
                if kept > 0 {
                    hits.truncate(kept);
                }
            }
        }
        // Relative score fusion: each ranking's scores scaled to [0, 1]
        // over its candidates (an event a ranking did not return counts 0
        // there), then weighted and summed. Unlike ranks, scaled scores
        // keep how far apart two candidates are: a near miss of one
        // embedder does not outweigh the other's clear first.
        let top = hits.first().map_or(0.0, |h| f64::from(h.score));
        let bottom = hits.last().map_or(0.0, |h| f64::from(h.score));
        for hit in hits {
            let Some(seq) = chain_seq(&hit) else { continue };
            let scaled = if top > bottom {
                (f64::from(hit.score) - bottom) / (top - bottom)
            } else {
                1.0
            };
            let add = ranked.weight * scaled;
            fused
                .entry(seq)
                .and_modify(|(score, _)| *score += add)
                .or_insert((add, hit));
        }
    }
    let mut out: Vec<ScoredPayload> = fused
        .into_values()
        .map(|(score, hit)| ScoredPayload {
            score: score as f32,
            payload: hit.payload,
        })
        .collect();
    order(&mut out);
    out.truncate(limit);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn hit(seq: u64, score: f32) -> ScoredPayload {
        ScoredPayload {
            score,
            payload: json!({ fields::CHAIN_SEQ: seq }),
        }
    }

    fn seqs(hits: &[ScoredPayload]) -> Vec<u64> {
        hits.iter().filter_map(chain_seq).collect()
    }

    #[test]
    fn scaled_scores_are_weighted_and_ties_go_newest_first() {
        let sparse = [hit(1, 2.0), hit(2, 2.0), hit(3, 1.0)];
        let dense = [hit(3, 0.9), hit(1, 0.5), hit(2, 0.5), hit(4, 0.1)];
        let out = fuse(
            &[
                Ranked {
                    hits: &sparse,
                    asked: 10,
                    weight: 0.3,
                },
                Ranked {
                    hits: &dense,
                    asked: 10,
                    weight: 0.7,
                },
            ],
            10,
        );
        // 3: 0.3 * 0 + 0.7 * 1 = 0.7; 1 and 2: 0.3 + 0.7 * 0.5 = 0.65
        // each (equal: newest first); 4: 0.
        assert_eq!(seqs(&out), vec![3, 2, 1, 4]);
        assert_eq!(out[1].score, out[2].score);
        assert!((out[0].score - 0.7).abs() < 1e-6);
    }

    #[test]
    fn a_run_of_equal_scores_cut_by_the_limit_is_left_out() {
        // Asked for 3: the store may have returned any two of the tied run.
        let sparse = [hit(9, 3.0), hit(4, 1.0), hit(5, 1.0)];
        let out = fuse(
            &[Ranked {
                hits: &sparse,
                asked: 3,
                weight: 1.0,
            }],
            10,
        );
        assert_eq!(seqs(&out), vec![9]);
    }

    proptest! {
        /// The fused answer does not depend on the order the store returns
        /// hits in, nor on which of a tied run at the cut it returned.
        #[test]
        fn fusion_ignores_storage_order(
            scores in proptest::collection::vec((0u8..6, 0u8..6), 1..40),
            shuffle_seed in any::<u64>(),
            asked in 5usize..30,
        ) {
            let all: Vec<(u64, f32, f32)> = scores
                .iter()
                .enumerate()
                .map(|(i, (a, b))| (i as u64 + 1, f32::from(*a), f32::from(*b)))
                .collect();
            // What a store returns: the top `asked` by score, equal
            // scores in its storage order (by id, or by a scrambled id).
            let top = |score: fn(&(u64, f32, f32)) -> f32, scrambled: bool| {
                let mut v = all.clone();
                if scrambled {
                    v.sort_by_key(|t| t.0.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ shuffle_seed);
                }
                v.sort_by(|a, b| score(b).total_cmp(&score(a)));
                v.truncate(asked);
                v.iter().map(|t| hit(t.0, score(t))).collect::<Vec<_>>()
            };
            // A full list of one tied run: no order-free answer exists.
            for score in [(|t: &(u64, f32, f32)| t.1) as fn(&(u64, f32, f32)) -> f32, |t| t.2] {
                let list = top(score, false);
                prop_assume!(
                    list.len() < asked || list.first().map(|h| h.score) != list.last().map(|h| h.score)
                );
            }
            let run = |scrambled: bool| {
                let sparse = top(|t| t.1, scrambled);
                let dense = top(|t| t.2, scrambled);
                fuse(
                    &[
                        Ranked { hits: &sparse, asked, weight: 1.0 },
                        Ranked { hits: &dense, asked, weight: 1.0 },
                    ],
                    10,
                )
            };
            let (a, b) = (run(false), run(true));
            prop_assert_eq!(seqs(&a), seqs(&b));
        }
    }
}
