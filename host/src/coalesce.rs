//! Bursts become one operation: a key (a path, a source) touched several
//! times is handed out once it has been quiet for the window, or once it
//! has waited `max_delay` since its first touch, so a file written
//! without pause is still recorded.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Coalescer<K: Ord + Clone> {
    window: Duration,
    max_delay: Duration,
    /// Key → (first touch, last touch) since it was last handed out.
    pending: BTreeMap<K, (Instant, Instant)>,
}

impl<K: Ord + Clone> Coalescer<K> {
    pub fn new(window: Duration) -> Self {
        Coalescer {
            window,
            max_delay: window.saturating_mul(5).max(Duration::from_millis(1)),
            pending: BTreeMap::new(),
        }
    }

    pub fn touch(&mut self, key: K, now: Instant) {
        self.pending
            .entry(key)
            .and_modify(|(_, last)| *last = now.max(*last))
            .or_insert((now, now));
    }

    fn is_due(&self, (first, last): (Instant, Instant), now: Instant) -> bool {
        now.saturating_duration_since(last) >= self.window
            || now.saturating_duration_since(first) >= self.max_delay
    }

    /// The keys due at `now`, each handed out once, in key order.
    pub fn due(&mut self, now: Instant) -> Vec<K> {
        let due: Vec<K> = self
            .pending
            .iter()
            .filter(|(_, t)| self.is_due(**t, now))
            .map(|(k, _)| k.clone())
            .collect();
        for k in &due {
            self.pending.remove(k);
        }
        due
    }

    /// Every pending key, due or not (a watch that stops records them).
    pub fn drain(&mut self) -> Vec<K> {
        std::mem::take(&mut self.pending).into_keys().collect()
    }

    /// When the next key falls due, if any is pending.
    pub fn next_due(&self) -> Option<Instant> {
        self.pending
            .values()
            .map(|(first, last)| (*last + self.window).min(*first + self.max_delay))
            .min()
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Every key touched is handed out exactly once per quiet period,
        /// never before it is due, and never later than due plus the step.
        #[test]
        fn every_touch_is_handed_out_once_and_never_early(
            touches in proptest::collection::vec((0u8..6, 0u64..50), 1..80),
            step in 1u64..30,
        ) {
            let base = Instant::now();
            let window = Duration::from_millis(20);
            let mut c = Coalescer::new(window);
            let mut touches = touches;
            touches.sort_by_key(|t| t.1);
            let at = |ms: u64| base + Duration::from_millis(ms);
            let mut handed: Vec<(u8, u64)> = Vec::new();
            let mut last_touch: BTreeMap<u8, u64> = BTreeMap::new();
            let mut first_touch: BTreeMap<u8, u64> = BTreeMap::new();
            let mut i = 0;
            let mut now = 0;
            while now < 400 {
                while i < touches.len() && touches[i].1 <= now {
                    let (k, t) = touches[i];
                    c.touch(k, at(t));
                    last_touch.insert(k, t);
                    first_touch.entry(k).or_insert(t);
                    i += 1;
                }
                for k in c.due(at(now)) {
                    let (first, last) = (first_touch[&k], last_touch[&k]);
                    prop_assert!(now >= last + 20 || now >= first + 100, "{k} early at {now}");
                    prop_assert!(now < (last + 20).min(first + 100) + step, "{k} late at {now}");
                    first_touch.remove(&k);
                    handed.push((k, now));
                }
                now += step;
            }
            prop_assert!(c.is_empty());
            prop_assert!(first_touch.is_empty(), "never handed out: {first_touch:?}");
            let keys: std::collections::BTreeSet<u8> = touches.iter().map(|t| t.0).collect();
            let out: std::collections::BTreeSet<u8> = handed.iter().map(|h| h.0).collect();
            prop_assert_eq!(keys, out);
        }
    }

    #[test]
    fn a_file_written_without_pause_is_still_handed_out() {
        let base = Instant::now();
        let mut c = Coalescer::new(Duration::from_millis(10));
        let mut out = 0;
        for ms in 0..200 {
            c.touch("f", base + Duration::from_millis(ms));
            out += c.due(base + Duration::from_millis(ms)).len();
        }
        assert!(out >= 3, "handed out {out} times in 200 ms of writes");
    }
}
