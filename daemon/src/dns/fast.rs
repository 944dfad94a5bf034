//! The answers already sent, kept as bytes: a query that is byte for byte one answered before
//! (its ID aside) gets the same answer again with its ID, without parsing it into a message,
//! looking the zone up or encoding records. Most of a cluster's queries are the same few
//! names asked again and again, so most are answered this way.
//!
//! Exactness: the key is the whole query after its ID (flags, counts, the question as sent,
//! case included, and any EDNS record), so the cached answer is the one the full path would
//! encode for it (that path is deterministic). Only the zone's own authoritative answers are
//! kept (AA set, not truncated): forwarded answers, refusals and errors always take the full
//! path.
//!
//! Never stale: the cache belongs to one registry state (the registered nodes' generation and
//! the operator records' generation, the two inputs of the zone; discovered machines, which
//! come and go with DHCP traffic, are not in the zone and do not move it); a query that finds the
//! registry moved on clears it first, so an answer from before a change is never sent after
//! the change is visible. An answer computed while the registry changed is stored only if the
//! generation it was computed under is still the cache's.

use std::collections::HashMap;
use std::sync::RwLock;

/// Entries at most; beyond, the cache starts over (a flood of distinct names — random
/// subdomains, 0x20 case randomisation — costs the full path each, and memory stays bounded).
const MAX_ENTRIES: usize = 16_384;
/// Queries longer than this are not cached (a question is at most ~270 bytes, plus EDNS).
const MAX_QUERY: usize = 320;

/// A registry state: (registered nodes' generation, operator records' generation).
pub type Generation = (u64, u64);

#[derive(Default)]
struct Inner {
    generation: Generation,
    answers: HashMap<Box<[u8]>, Box<[u8]>>,
}

#[derive(Default)]
pub struct AnswerCache {
    inner: RwLock<Inner>,
}

/// Whether a query has a shape whose answer depends on nothing but its bytes and the zone: a
/// standard query (QR 0, opcode 0, not truncated) with one question and no answer or authority
/// records, and at most one additional record (EDNS).
pub fn cacheable_query(query: &[u8]) -> bool {
    query.len() >= 17
        && query.len() <= MAX_QUERY
        && query[2] & 0xfa == 0 // QR 0, opcode QUERY, TC 0
        && query[4..6] == [0, 1]
        && query[6..10] == [0, 0, 0, 0]
        && query[10] == 0
        && query[11] <= 1
}

/// Whether an answer may be cached: an authoritative answer of the zone (AA), not truncated.
fn cacheable_answer(answer: &[u8]) -> bool {
    answer.len() >= 12 && answer[2] & 0x80 != 0 && answer[2] & 0x04 != 0 && answer[2] & 0x02 == 0
}

impl AnswerCache {
    /// Writes the answer to `query` into `out` (with the query's ID) if one is cached for
    /// this registry state; clears the cache first if the registry moved on.
    pub fn answer(&self, query: &[u8], now: Generation, out: &mut Vec<u8>) -> bool {
        if !cacheable_query(query) {
            return false;
        }
        {
            let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
            if inner.generation == now {
                return match inner.answers.get(&query[2..]) {
                    Some(answer) => {
                        out.clear();
                        out.extend_from_slice(&query[..2]);
                        out.extend_from_slice(answer);
                        true
                    }
                    None => false,
                };
            }
        }
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if inner.generation != now {
            inner.answers.clear();
            inner.generation = now;
        }
        false
    }

    /// Keeps `answer` (as the full path encoded it for `query` under registry state
    /// `computed_under`) if both may be cached and the registry is still in that state.
    pub fn store(&self, query: &[u8], answer: &[u8], computed_under: Generation) {
        if !cacheable_query(query) || !cacheable_answer(answer) || answer[..2] != query[..2] {
            return;
        }
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if inner.generation != computed_under {
            return;
        }
        if inner.answers.len() >= MAX_ENTRIES {
            inner.answers.clear();
        }
        inner.answers.insert(query[2..].into(), answer[2..].into());
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .answers
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(id: u16, name: &[&str], qtype: u16) -> Vec<u8> {
        let mut q = id.to_be_bytes().to_vec();
        q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
        for label in name {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&[0, 1]);
        q
    }

    fn answer_to(q: &[u8], rcode: u8) -> Vec<u8> {
        let mut a = q.to_vec();
        a[2] = 0x85; // QR, AA, RD
        a[3] = rcode;
        a.extend_from_slice(b"records");
        a
    }

    #[test]
    fn a_repeated_query_gets_the_same_answer_with_its_own_id() {
        let cache = AnswerCache::default();
        let q1 = query(1, &["kube01", "lacave"], 1);
        let mut out = Vec::new();
        assert!(!cache.answer(&q1, (1, 1), &mut out), "empty");
        cache.store(&q1, &answer_to(&q1, 0), (1, 1));
        let q2 = query(0xbeef, &["kube01", "lacave"], 1);
        assert!(cache.answer(&q2, (1, 1), &mut out));
        let mut expected = answer_to(&q2, 0);
        expected[..2].copy_from_slice(&[0xbe, 0xef]);
        assert_eq!(out, expected);
        // Another case is another query (its answer echoes the question as asked).
        assert!(!cache.answer(&query(3, &["KUBE01", "lacave"], 1), (1, 1), &mut out));
        // Another type too.
        assert!(!cache.answer(&query(3, &["kube01", "lacave"], 28), (1, 1), &mut out));
    }

    #[test]
    fn a_registry_change_empties_the_cache_and_late_answers_are_not_kept() {
        let cache = AnswerCache::default();
        let q = query(1, &["kube01", "lacave"], 1);
        let mut out = Vec::new();
        cache.answer(&q, (1, 1), &mut out);
        cache.store(&q, &answer_to(&q, 0), (1, 1));
        assert!(cache.answer(&q, (1, 1), &mut out));
        // The registry changed: the old answer is never sent again.
        assert!(!cache.answer(&q, (2, 1), &mut out));
        assert_eq!(cache.len(), 0);
        // An answer computed before the change, stored after it: dropped.
        cache.store(&q, &answer_to(&q, 0), (1, 1));
        assert!(!cache.answer(&q, (2, 1), &mut out));
        // Operator records count as a change too.
        cache.store(&q, &answer_to(&q, 0), (2, 1));
        assert!(cache.answer(&q, (2, 1), &mut out));
        assert!(!cache.answer(&q, (2, 2), &mut out));
    }

    #[test]
    fn only_plain_queries_and_authoritative_answers_are_kept() {
        let cache = AnswerCache::default();
        let mut out = Vec::new();
        let q = query(1, &["kube01", "lacave"], 1);
        cache.answer(&q, (1, 1), &mut out);
        // Forwarded (no AA), truncated, or a refusal without AA: not kept.
        let mut forwarded = answer_to(&q, 0);
        forwarded[2] = 0x81;
        cache.store(&q, &forwarded, (1, 1));
        let mut truncated = answer_to(&q, 0);
        truncated[2] |= 0x02;
        cache.store(&q, &truncated, (1, 1));
        assert!(!cache.answer(&q, (1, 1), &mut out));
        // Queries of other shapes: a response, another opcode, two questions, an answer
        // record, too short.
        for bad in [
            {
                let mut b = q.clone();
                b[2] |= 0x80;
                b
            },
            {
                let mut b = q.clone();
                b[2] |= 0x28; // opcode 5 (UPDATE)
                b
            },
            {
                let mut b = q.clone();
                b[5] = 2;
                b
            },
            {
                let mut b = q.clone();
                b[7] = 1;
                b
            },
            q[..16].to_vec(),
        ] {
            assert!(!cacheable_query(&bad), "{bad:?}");
            cache.store(&bad, &answer_to(&bad, 0), (1, 1));
            assert!(!cache.answer(&bad, (1, 1), &mut out));
        }
    }
}
