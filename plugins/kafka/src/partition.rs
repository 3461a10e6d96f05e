//! The partition of a keyed record, chosen by the sink as the Java client's
//! default partitioner chooses it: `toPositive(murmur2(key)) % partitions`.
//!
//! A key therefore lands on the partition a Java (or Kafka Streams)
//! producer would pick for it, and librdkafka, handed the partition, runs
//! no partitioner of its own for the record. Records without a key, and
//! topics whose partition count is not known yet, are left to librdkafka,
//! which the sink configures with `partitioner=murmur2_random`: the same
//! function, so the answer never depends on who computed it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::client::{Client, ClientContext};

/// Kafka's murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`): the
/// 32-bit MurmurHash2 with seed `0x9747b28c`, little-endian words.
pub fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h = SEED ^ data.len() as u32;
    let mut words = data.chunks_exact(4);
    for w in &mut words {
        let mut k = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = words.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if let Some(&b) = tail.first() {
        h ^= u32::from(b);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// The partition for `key` among `partitions` (> 0), as the Java client's
/// `BuiltInPartitioner.partitionForKey`: the hash with its sign bit
/// cleared, modulo the count.
pub fn for_key(key: &[u8], partitions: u32) -> i32 {
    debug_assert!(partitions > 0);
    ((murmur2(key) & 0x7fff_ffff) % partitions.max(1)) as i32
}

/// Partition counts of the topics the sink produces to, from metadata
/// fetched at most once per `refresh` per topic (and not again for
/// `RETRY` after a failed fetch): between fetches a record costs a map
/// look-up and a hash.
pub(crate) struct Partitions {
    counts: HashMap<String, (Option<u32>, Instant)>,
    refresh: Duration,
    /// Off when the user chose another partitioner through `librdkafka`.
    enabled: bool,
}

const RETRY: Duration = Duration::from_secs(10);
const FETCH_TIMEOUT: Duration = Duration::from_millis(500);

impl Partitions {
    /// Ours to pick when the effective `partitioner` is murmur2_random
    /// (the default); refreshed as often as librdkafka refreshes metadata.
    pub(crate) fn for_properties(props: &[(String, String)]) -> Partitions {
        let get = |key: &str| {
            props
                .iter()
                .rev()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };
        let refresh = get("topic.metadata.refresh.interval.ms")
            .and_then(|v| v.parse().ok())
            .unwrap_or(300_000u64);
        Partitions::new(
            get("partitioner").is_none_or(|p| p == "murmur2_random"),
            Duration::from_millis(refresh),
        )
    }

    pub(crate) fn new(enabled: bool, refresh: Duration) -> Partitions {
        Partitions {
            counts: HashMap::new(),
            refresh,
            enabled,
        }
    }

    /// The partition for a keyed record, or `None` to leave it to
    /// librdkafka (no key, count unknown, or partitioning not ours).
    pub(crate) fn pick<C: ClientContext>(
        &mut self,
        client: &Client<C>,
        topic: &str,
        key: Option<&[u8]>,
    ) -> Option<i32> {
        let key = key.filter(|_| self.enabled)?;
        let now = Instant::now();
        let count = match self.counts.get(topic) {
            Some((count, until)) if now < *until => *count,
            _ => {
                let count = client
                    .fetch_metadata(Some(topic), FETCH_TIMEOUT)
                    .ok()
                    .and_then(|m| {
                        m.topics()
                            .iter()
                            .find(|t| t.name() == topic && t.error().is_none())
                            .map(|t| t.partitions().len() as u32)
                    })
                    .filter(|n| *n > 0);
                let until = now + if count.is_some() { self.refresh } else { RETRY };
                self.counts.insert(topic.to_string(), (count, until));
                count
            }
        }?;
        Some(for_key(key, count))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Vectors from the Kafka project's own tests (`UtilsTest.testMurmur2`,
    /// as signed Java ints) and librdkafka's `unittest_murmur2`.
    #[test]
    fn murmur2_matches_kafka_vectors() {
        let cases: &[(&[u8], i32)] = &[
            (b"21", -973932308),
            (b"foobar", -790332482),
            (b"a-little-bit-long-string", -985981536),
            (b"a-little-bit-longer-string", -1486304829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58897971,
            ),
            (b"abc", 479470107),
        ];
        for (key, want) in cases {
            assert_eq!(
                murmur2(key) as i32,
                *want,
                "{}",
                String::from_utf8_lossy(key)
            );
        }
    }

    #[test]
    fn murmur2_matches_librdkafka_vectors() {
        // librdkafka rdmurmur2.c: unittest_murmur2 (unsigned results),
        // whose keys are suffixes of two strings.
        let long: &[u8] = b"PreAmbleWillBeRemoved,ThePrePartThatIs";
        let cases: &[(&[u8], u32)] = &[
            (b"kafka", 0xd067cf64),
            (b"giberish123456789", 0x8f552b0c),
            (b"1234", 0x9fc97b14),
            (b"234", 0xe7c009ca),
            (b"34", 0x873930da),
            (b"4", 0x5a4b5ca1),
            (long, 0x78424f1c),
            (&long[1..], 0x4a62b377),
            (&long[2..], 0xe0e4e09e),
            (&long[3..], 0x62b8b43f),
            (b"", 0x106e08d9),
        ];
        for (key, want) in cases {
            assert_eq!(murmur2(key), *want, "{}", String::from_utf8_lossy(key));
        }
    }

    #[test]
    fn for_key_clears_the_sign_bit_and_stays_in_range() {
        // "21" hashes to a negative Java int: toPositive, not abs.
        let h = murmur2(b"21");
        assert!((h as i32) < 0);
        assert_eq!(for_key(b"21", 7), ((h & 0x7fff_ffff) % 7) as i32);
        for n in 1..64u32 {
            for key in [&b"alice"[..], b"bob", b"", b"a-little-bit-long-string"] {
                let p = for_key(key, n);
                assert!((0..n as i32).contains(&p));
            }
        }
        assert_eq!(for_key(b"anything", 1), 0);
    }
}
