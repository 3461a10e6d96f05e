//! [`Rng`]: a small seeded generator (xorshift) for the randomized tests,
//! which print their seed so that a failing run can be replayed.

use std::time::Duration;

pub struct Rng(u64);

impl Rng {
    /// Seeded from the environment variable `var` if it holds a number,
    /// else from the clock; prints `VAR=SEED` either way.
    pub fn from_env_or_clock(var: &str) -> Rng {
        let seed = std::env::var(var)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .expect("clock after 1970")
                    .as_nanos() as u64
            });
        println!("{var}={seed}");
        Rng(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// A duration in `min..max` milliseconds.
    pub fn millis(&mut self, min: u64, max: u64) -> Duration {
        Duration::from_millis(min + self.next_u64() % (max - min))
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }
}
