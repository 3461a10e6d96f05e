//! Writes sequence-numbered log lines to a file: as fast as possible or at
//! a fixed rate, optionally rotating the file by rename as it grows.
//!
//! loadgen --out /tmp/load/app.log --lines 1000000 --size 100 --seed 1
//! loadgen --out app.log --lines 600000 --rate 10000 --rotate-bytes 10000000
//! loadgen --out /tmp/load/many --files 1000 --lines 2000000   # round-robin over 1,000 files
//! loadgen --tcp 127.0.0.1:5140 --connections 1000 --lines 2000000
//! loadgen --tcp 127.0.0.1:5514 --connections 4 --syslog --lines 2000000   # RFC 5424, octet counting

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Parser;

use tailrace_benchmarks::lines::{Generator, Sizes};
use tailrace_benchmarks::shapes;

#[derive(Parser, Debug)]
#[command(about = "Writes sequence-numbered log lines for tailrace benchmarks and tests")]
struct Args {
    /// The file to append to (with --files, the directory).
    #[arg(long, required_unless_present = "tcp")]
    out: Option<PathBuf>,
    /// Append to this many files, OUT/app-0000.log …, a chunk to each in
    /// turn.
    #[arg(long, default_value_t = 1)]
    files: usize,
    /// Send over TCP to this address instead of writing a file.
    #[arg(long)]
    tcp: Option<String>,
    /// With --tcp: how many connections, each sent a chunk in turn.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// With --tcp: each line as the MSG of an RFC 5424 message, framed by
    /// octet counting.
    #[arg(long)]
    syslog: bool,
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

/// Where the chunks go: the one file (rotated if asked), many files in
/// turn, or many TCP connections in turn.
enum Out {
    File(std::fs::File, PathBuf),
    Files(Vec<std::fs::File>),
    Tcp(Vec<std::net::TcpStream>),
}

impl Out {
    fn open(args: &Args) -> anyhow::Result<Out> {
        if let Some(address) = &args.tcp {
            let mut conns = Vec::with_capacity(args.connections);
            for _ in 0..args.connections {
                let s = std::net::TcpStream::connect(address)?;
                s.set_nodelay(true)?;
                conns.push(s);
            }
            return Ok(Out::Tcp(conns));
        }
        let out = args.out.clone().expect("--out or --tcp");
        let open = |p: &Path| OpenOptions::new().create(true).append(true).open(p);
        if args.files > 1 {
            std::fs::create_dir_all(&out)?;
            let files = (0..args.files)
                .map(|i| open(&out.join(format!("app-{i:04}.log"))))
                .collect::<Result<_, _>>()?;
            return Ok(Out::Files(files));
        }
        Ok(Out::File(open(&out)?, out))
    }

    fn ways(&self) -> usize {
        match self {
            Out::File(..) => 1,
            Out::Files(f) => f.len(),
            Out::Tcp(c) => c.len(),
        }
    }

    /// Writes `buf` to way `i`.
    fn write(&mut self, i: usize, buf: &[u8]) -> std::io::Result<()> {
        match self {
            Out::File(f, _) => f.write_all(buf),
            Out::Files(f) => f[i].write_all(buf),
            Out::Tcp(c) => c[i].write_all(buf),
        }
    }
}

/// Opens files up to the hard limit: a thousand files or connections pass
/// the usual soft limit of 1,024 descriptors.
fn raise_descriptor_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain system calls on a stack value.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    raise_descriptor_limit();
    let mut gen = Generator::new(args.seed, args.size);
    let mut out = Out::open(&args)?;
    let ways = out.ways();
    let mut written_bytes = 0u64;
    let mut buf = Vec::with_capacity(1 << 20);
    let mut line = Vec::with_capacity(1 << 10);
    let started = Instant::now();
    // Lines per write: a burst of at most 10 ms worth at a fixed rate, and
    // with many ways, few enough that every way gets some.
    let chunk = if args.rate == 0 {
        10_000
    } else {
        (args.rate / 100).max(1)
    };
    let chunk = if ways > 1 {
        chunk.min(args.lines / ways as u64).clamp(1, 100)
    } else {
        chunk
    };
    let mut seq = args.first;
    let end = args.first + args.lines;
    let mut way = 0;
    while seq < end {
        buf.clear();
        let upto = (seq + chunk).min(end);
        while seq < upto {
            if args.syslog {
                line.clear();
                gen.line(seq, &mut line);
                shapes::syslog5424(seq, &line, true, &mut buf);
            } else {
                gen.line(seq, &mut buf);
            }
            seq += 1;
        }
        out.write(way, &buf)?;
        way = (way + 1) % ways;
        written_bytes += buf.len() as u64;
        if let Out::File(file, path) = &mut out {
            if args.rotate_bytes > 0 && written_bytes >= args.rotate_bytes {
                file.flush()?;
                rotate(path)?;
                *file = OpenOptions::new().create(true).append(true).open(&*path)?;
                written_bytes = 0;
            }
        }
        if args.rate > 0 {
            let due =
                started + Duration::from_secs_f64((seq - args.first) as f64 / args.rate as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
    }
    drop(out);
    eprintln!("loadgen: {} lines in {:.2?}", args.lines, started.elapsed());
    Ok(())
}
