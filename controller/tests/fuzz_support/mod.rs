//! The mutation engine of the fuzz tests (controller and node): seeds from a corpus
//! directory or built values, mutated a bounded number of times with a fixed seed.

use std::path::Path;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Mutants per target: `REBEAM_FUZZ_ITERS`, default 30,000.
pub fn iterations() -> usize {
    std::env::var("REBEAM_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30_000)
}

/// The generator, seeded from `REBEAM_FUZZ_SEED` (fixed by default, so runs repeat).
pub fn rng() -> StdRng {
    let seed = std::env::var("REBEAM_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_cafe);
    eprintln!("fuzz seed {seed} (REBEAM_FUZZ_SEED)");
    StdRng::seed_from_u64(seed)
}

/// The seed files of `dir/kind`, in a stable order.
pub fn corpus(dir: &Path, kind: &str) -> Vec<Vec<u8>> {
    let dir = dir.join(kind);
    let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read(e.path()).ok())
        .collect();
    seeds.sort();
    assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
    seeds
}

/// Integers that sit on boundaries (overflow, sign, width).
pub const INTERESTING: [u64; 8] = [0, 1, 0x7f, 0xff, 0xffff, 1 << 31, u64::MAX, 1 << 48];

/// One to eight random mutations of `seed`, sometimes spliced with `other`.
pub fn mutate(rng: &mut StdRng, seed: &[u8], other: &[u8]) -> Vec<u8> {
    let mut data = seed.to_vec();
    for _ in 0..rng.random_range(1..=8) {
        let len = data.len();
        match rng.random_range(0..7) {
            0 if len > 0 => {
                let i = rng.random_range(0..len);
                data[i] ^= 1 << rng.random_range(0..8);
            }
            1 if len > 0 => {
                let i = rng.random_range(0..len);
                data[i] = rng.random();
            }
            2 => {
                let i = rng.random_range(0..=len);
                let n = rng.random_range(1..=16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                data.splice(i..i, bytes);
            }
            3 if len > 0 => {
                let i = rng.random_range(0..len);
                let j = (i + rng.random_range(1..=32)).min(len);
                data.drain(i..j);
            }
            4 if !other.is_empty() => {
                let cut = rng.random_range(0..=len);
                let from = rng.random_range(0..other.len());
                data.truncate(cut);
                data.extend_from_slice(&other[from..]);
            }
            5 if len >= 8 => {
                let i = rng.random_range(0..=len - 8);
                let v = INTERESTING[rng.random_range(0..INTERESTING.len())];
                data[i..i + 8].copy_from_slice(&v.to_le_bytes());
            }
            _ => {
                // ASCII digits where numbers are written in text formats.
                if len > 0 {
                    let i = rng.random_range(0..len);
                    data[i] = b"0123456789-e.\"[]{}"[rng.random_range(0..18)];
                }
            }
        }
    }
    data
}

/// Feeds `iterations()` mutants of the seeds to `target`.
pub fn fuzz(seeds: &[Vec<u8>], mut target: impl FnMut(&[u8])) {
    let mut rng = rng();
    for seed in seeds {
        target(seed);
    }
    for _ in 0..iterations() {
        let a = &seeds[rng.random_range(0..seeds.len())];
        let b = &seeds[rng.random_range(0..seeds.len())];
        let input = mutate(&mut rng, a, b);
        target(&input);
    }
}
