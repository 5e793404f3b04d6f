//! Log lines a flood cannot multiply: refusals, slow-consumer actions and failed forwards
//! are logged at most once per (reason, client IP) per 10 s; the line that ends a quiet
//! spell says how many were left out (`suppressed`). Metrics still count every one.
//!
//! ```ignore
//! if let Some(suppressed) = logbound::admit("max_connections_per_ip", Some(ip)) {
//!     tracing::info!(%ip, suppressed, "stream refused");
//! }
//! ```
//!
//! A call is O(1): one hash lookup under one of 16 locks, chosen by the key. Memory is
//! bounded: at most 256 keys per lock. When a lock's table is full, keys whose window has
//! passed are forgotten (a sweep, at most once per window); if it is still full, a new
//! address is counted under its reason alone (`ip` absent), so a flood from many addresses
//! still logs one line per reason per window.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// One line per key per this long.
pub const WINDOW: Duration = Duration::from_secs(10);

const SHARDS: usize = 16;
const KEYS_PER_SHARD: usize = 256;

/// What is rate-limited together: the reason and the client's address (`None`: unknown,
/// or one of too many addresses).
type Key = (&'static str, Option<IpAddr>);

/// The process's bound: log lines are the process's, whichever instance writes them.
static BOUND: LazyLock<Bound> = LazyLock::new(|| Bound::new(WINDOW));

/// Whether to log this occurrence of `reason` from `ip`: `Some(n)`, where `n` occurrences
/// of the same key were left out since its last line; `None`: leave it out.
pub fn admit(reason: &'static str, ip: Option<IpAddr>) -> Option<u64> {
    BOUND.admit((reason, ip), Instant::now())
}

struct Bound {
    window: Duration,
    hasher: std::hash::RandomState,
    shards: [Mutex<Shard>; SHARDS],
}

struct Shard {
    keys: HashMap<Key, Spell>,
    /// When the table was last swept of expired keys.
    swept: Option<Instant>,
}

/// A key's current window.
struct Spell {
    started: Instant,
    suppressed: u64,
}

impl Bound {
    fn new(window: Duration) -> Self {
        Self {
            window,
            hasher: std::hash::RandomState::new(),
            shards: std::array::from_fn(|_| {
                Mutex::new(Shard {
                    keys: HashMap::new(),
                    swept: None,
                })
            }),
        }
    }

    fn admit(&self, key: Key, now: Instant) -> Option<u64> {
        let i = (self.hasher.hash_one(key) as usize) % SHARDS;
        let mut shard = self.shards[i]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = shard.room_for(key, now, self.window);
        match shard.keys.get_mut(&key) {
            Some(spell) if now.duration_since(spell.started) < self.window => {
                spell.suppressed += 1;
                None
            }
            Some(spell) => {
                let suppressed = spell.suppressed;
                *spell = Spell {
                    started: now,
                    suppressed: 0,
                };
                Some(suppressed)
            }
            None => {
                shard.keys.insert(
                    key,
                    Spell {
                        started: now,
                        suppressed: 0,
                    },
                );
                Some(0)
            }
        }
    }
}

impl Shard {
    /// `key`, or its reason alone when the table has no room for another key.
    fn room_for(&mut self, key: Key, now: Instant, window: Duration) -> Key {
        if self.keys.len() < KEYS_PER_SHARD || self.keys.contains_key(&key) {
            return key;
        }
        if self.swept.is_none_or(|at| now.duration_since(at) >= window) {
            self.swept = Some(now);
            self.keys
                .retain(|_, spell| now.duration_since(spell.started) < window);
            if self.keys.len() < KEYS_PER_SHARD {
                return key;
            }
        }
        // Beyond the table: one key per reason (a handful), so still bounded.
        (key.0, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1)));
    const B: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2)));

    #[test]
    fn one_line_per_key_per_window_then_the_count_left_out() {
        let bound = Bound::new(WINDOW);
        let t0 = Instant::now();
        assert_eq!(bound.admit(("refused", A), t0), Some(0));
        for _ in 0..999 {
            assert_eq!(
                bound.admit(("refused", A), t0 + Duration::from_secs(1)),
                None
            );
        }
        assert_eq!(bound.admit(("refused", B), t0), Some(0), "another address");
        assert_eq!(bound.admit(("other", A), t0), Some(0), "another reason");
        assert_eq!(
            bound.admit(("refused", A), t0 + WINDOW),
            Some(999),
            "the next line counts the ones left out"
        );
        assert_eq!(bound.admit(("refused", A), t0 + WINDOW), None);
    }

    #[test]
    fn memory_is_bounded_and_a_flood_from_many_addresses_still_logs_per_reason() {
        let bound = Bound::new(WINDOW);
        let t0 = Instant::now();
        let mut logged = 0;
        for n in 0..100_000u32 {
            let ip = Some(IpAddr::V4(n.into()));
            logged += usize::from(bound.admit(("refused", ip), t0).is_some());
        }
        let held: usize = bound
            .shards
            .iter()
            .map(|s| s.lock().map(|s| s.keys.len()).unwrap_or(0))
            .sum();
        assert!(held <= SHARDS * (KEYS_PER_SHARD + 1), "{held} keys");
        assert!(logged <= SHARDS * (KEYS_PER_SHARD + 1), "{logged} lines");
        // A window later, the old keys are swept and new addresses have room again.
        let later = Some(IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1)));
        assert_eq!(bound.admit(("refused", later), t0 + WINDOW), Some(0));
    }
}
