//! The lines the load generator writes: seeded, each carrying a sequence
//! number at a fixed place, so a consumer can check what arrived.

/// xorshift64*: small, fast, and the same stream for the same seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// How long lines are, newline included.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sizes {
    Fixed(usize),
    Uniform(usize, usize),
}

impl std::str::FromStr for Sizes {
    type Err = String;
    /// `100`, `fixed:100`, `uniform:60-400`
    fn from_str(s: &str) -> Result<Sizes, String> {
        let s = s.strip_prefix("fixed:").unwrap_or(s);
        if let Some(range) = s.strip_prefix("uniform:") {
            let (a, b) = range.split_once('-').ok_or("uniform:MIN-MAX")?;
            let (a, b): (usize, usize) = (
                a.parse().map_err(|_| "bad MIN")?,
                b.parse().map_err(|_| "bad MAX")?,
            );
            if a < MIN_LINE || b < a {
                return Err(format!("uniform:MIN-MAX needs {MIN_LINE} <= MIN <= MAX"));
            }
            return Ok(Sizes::Uniform(a, b));
        }
        let n: usize = s
            .parse()
            .map_err(|_| format!("line size {s:?}: a number, fixed:N or uniform:MIN-MAX"))?;
        if n < MIN_LINE {
            return Err(format!("lines need at least {MIN_LINE} bytes"));
        }
        Ok(Sizes::Fixed(n))
    }
}

impl std::fmt::Display for Sizes {
    /// The form `from_str` reads.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Sizes::Fixed(n) => write!(f, "fixed:{n}"),
            Sizes::Uniform(a, b) => write!(f, "uniform:{a}-{b}"),
        }
    }
}

/// `seq=0000000000 ` and a newline.
pub const MIN_LINE: usize = 16;

const LEVELS: [&str; 4] = ["INFO", "INFO", "WARN", "DEBUG"];
const USERS: [&str; 8] = ["ann", "bob", "cid", "dee", "eve", "fay", "gus", "hal"];
const ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

/// Appends line `seq` of the given length (newline included) to `out`: a
/// sequence number, then text shaped like an application log.
pub fn line(rng: &mut Rng, seq: u64, len: usize, out: &mut Vec<u8>) {
    let start = out.len();
    use std::io::Write as _;
    let _ = write!(
        out,
        "seq={seq:010} {} user={} req={:08x} latency_ms={} ",
        LEVELS[rng.below(4) as usize],
        USERS[rng.below(8) as usize],
        rng.next_u64() as u32,
        rng.below(2000)
    );
    out.truncate(start + len - 1);
    while out.len() < start + len - 1 {
        out.push(ALNUM[rng.below(ALNUM.len() as u64) as usize]);
    }
    out.push(b'\n');
}

/// Lines drawn once and then repeated with new sequence numbers: at a
/// million lines a second the generator shares the machine with the agent,
/// and drawing every line costs it about 160 ns. The 65,536 lines (about
/// 6 MB at 100 bytes) repeat far beyond LZ4's 64 KiB window, so they
/// compress as freshly drawn ones do.
pub struct Generator {
    text: Vec<u8>,
    /// Where each drawn line ends in `text`.
    ends: Vec<usize>,
    next: usize,
}

impl Generator {
    const DRAWN: usize = 1 << 16;

    pub fn new(seed: u64, sizes: Sizes) -> Generator {
        let mut rng = Rng::new(seed);
        let mut text = Vec::new();
        let mut ends = Vec::with_capacity(Self::DRAWN);
        for i in 0..Self::DRAWN {
            let len = sizes.pick(&mut rng);
            line(&mut rng, i as u64, len, &mut text);
            ends.push(text.len());
        }
        Generator {
            text,
            ends,
            next: 0,
        }
    }

    /// Appends the next line, numbered `seq`, to `out`.
    pub fn line(&mut self, seq: u64, out: &mut Vec<u8>) {
        let i = self.next;
        self.next = (i + 1) % Self::DRAWN;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        let at = out.len();
        out.extend_from_slice(&self.text[start..self.ends[i]]);
        // "seq=" then ten digits, as `line` writes them.
        let mut n = seq;
        for d in out[at + 4..at + 14].iter_mut().rev() {
            *d = b'0' + (n % 10) as u8;
            n /= 10;
        }
    }
}

/// The sequence number of a line written by [`line`]: the e2e tests'
/// `seq=` and ten digits, read by the one parser of the test kit. (The
/// count itself stays a bitset in main.rs: [`tailrace_e2e::Report`] keeps a
/// map entry per line and compares every byte with its fixed-length line,
/// which neither fits 66 million lines nor the generator's drawn text.)
pub use tailrace_e2e::seq_of;

impl Sizes {
    pub fn pick(self, rng: &mut Rng) -> usize {
        match self {
            Sizes::Fixed(n) => n,
            Sizes::Uniform(a, b) => a + rng.below((b - a + 1) as u64) as usize,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_have_their_length_and_number() {
        let mut rng = Rng::new(7);
        for (seq, len) in [(0u64, 16usize), (42, 100), (9_999_999_999, 300)] {
            let mut out = Vec::new();
            line(&mut rng, seq, len, &mut out);
            assert_eq!(out.len(), len);
            assert_eq!(*out.last().unwrap(), b'\n');
            assert_eq!(seq_of(&out), Some(seq));
            assert!(!out[..len - 1].contains(&b'\n'));
        }
    }

    #[test]
    fn generated_lines_are_numbered_and_sized() {
        let mut gen = Generator::new(3, Sizes::Uniform(16, 300));
        let mut out = Vec::new();
        for seq in 0..(Generator::DRAWN as u64 + 10) {
            let from = out.len();
            gen.line(seq + 1_000_000, &mut out);
            let l = &out[from..];
            assert!((16..=300).contains(&l.len()));
            assert_eq!(*l.last().unwrap(), b'\n');
            assert_eq!(seq_of(l), Some(seq + 1_000_000));
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_lines() {
        let gen = |seed| {
            let mut rng = Rng::new(seed);
            let mut out = Vec::new();
            for i in 0..100 {
                line(&mut rng, i, 100, &mut out);
            }
            out
        };
        assert_eq!(gen(1), gen(1));
        assert_ne!(gen(1), gen(2));
    }

    #[test]
    fn sizes_parse() {
        assert_eq!("100".parse(), Ok(Sizes::Fixed(100)));
        assert_eq!("uniform:60-400".parse(), Ok(Sizes::Uniform(60, 400)));
        for sizes in [Sizes::Fixed(100), Sizes::Uniform(60, 400)] {
            assert_eq!(sizes.to_string().parse(), Ok(sizes));
        }
        assert!("uniform:400-60".parse::<Sizes>().is_err());
        assert!("5".parse::<Sizes>().is_err());
    }
}
