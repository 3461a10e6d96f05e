//! Writes sequence-numbered log lines to a file: as fast as possible or at
//! a fixed rate, optionally rotating the file by rename as it grows.
//!
//! loadgen --out /tmp/load/app.log --lines 1000000 --size 100 --seed 1
//! loadgen --out app.log --lines 600000 --rate 10000 --rotate-bytes 10000000

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Parser;

use tailrace_benchmarks::lines::{Generator, Sizes};

#[derive(Parser, Debug)]
#[command(about = "Writes sequence-numbered log lines for tailrace benchmarks and tests")]
struct Args {
    /// The file to append to.
    #[arg(long)]
    out: PathBuf,
    /// How many lines.
    #[arg(long)]
    lines: u64,
    /// Line length with its newline: N, fixed:N or uniform:MIN-MAX.
    #[arg(long, default_value = "100")]
    size: Sizes,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Lines per second; 0 writes as fast as possible.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Rename the file to FILE.1 (older ones to .2, .3 …) once it holds this
    /// many bytes, and start a new one; 0 never rotates.
    #[arg(long, default_value_t = 0)]
    rotate_bytes: u64,
    /// The first sequence number.
    #[arg(long, default_value_t = 0)]
    first: u64,
}

fn rotate(path: &Path) -> std::io::Result<()> {
    let name = |n: u32| PathBuf::from(format!("{}.{n}", path.display()));
    let mut n = 1;
    while name(n).exists() {
        n += 1;
    }
    for i in (1..n).rev() {
        std::fs::rename(name(i), name(i + 1))?;
    }
    std::fs::rename(path, name(1))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut gen = Generator::new(args.seed, args.size);
    let open = || OpenOptions::new().create(true).append(true).open(&args.out);
    let mut file = open()?;
    let mut written_bytes = 0u64;
    let mut buf = Vec::with_capacity(1 << 20);
    let started = Instant::now();
    // Lines per write: a burst of at most 10 ms worth at a fixed rate.
    let chunk = if args.rate == 0 {
        10_000
    } else {
        (args.rate / 100).max(1)
    };
    let mut seq = args.first;
    let end = args.first + args.lines;
    while seq < end {
        buf.clear();
        let upto = (seq + chunk).min(end);
        while seq < upto {
            gen.line(seq, &mut buf);
            seq += 1;
        }
        file.write_all(&buf)?;
        written_bytes += buf.len() as u64;
        if args.rotate_bytes > 0 && written_bytes >= args.rotate_bytes {
            file.flush()?;
            rotate(&args.out)?;
            file = open()?;
            written_bytes = 0;
        }
        if args.rate > 0 {
            let due =
                started + Duration::from_secs_f64((seq - args.first) as f64 / args.rate as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
    }
    file.flush()?;
    eprintln!("loadgen: {} lines in {:.2?}", args.lines, started.elapsed());
    Ok(())
}
