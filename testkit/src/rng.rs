//! The one deterministic random source of the tests, benchmarks and simulations: a seeded
//! xoshiro256++ (`rand::rngs::Xoshiro256PlusPlus`), never the global RNG, so that every run with
//! the same seed makes the same choices.

use rand::rngs::Xoshiro256PlusPlus;
use rand::seq::SliceRandom;
use rand::{Rng as _, RngExt, SeedableRng};

/// Words that [`Rng::text`] strings together.
const WORDS: &[&str] = &[
    "lunch", "rota", "deploy", "friday", "coffee", "machine", "budget", "offsite", "review",
    "agree", "maybe", "later", "ticket", "design", "garden", "bikes", "parking", "quiet", "room",
    "music", "plants", "window", "standup", "retro",
];

/// A deterministic, seeded random source with the conveniences tests and benchmarks use.
#[derive(Clone, Debug)]
pub struct Rng(Xoshiro256PlusPlus);

impl Rng {
    /// A generator whose whole sequence is determined by `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(Xoshiro256PlusPlus::seed_from_u64(seed))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        self.0.random_range(0..n)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        self.0.random_range(lo..=hi)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        self.0.random()
    }

    /// Fills `out` with random bytes.
    pub fn fill(&mut self, out: &mut [u8]) {
        self.0.fill(out);
    }

    /// `N` random bytes (seeds, ids, salts, nonces).
    pub fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut b = [0u8; N];
        self.fill(&mut b);
        b
    }

    /// Shuffles `v` in place (Fisher-Yates).
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        v.shuffle(&mut self.0);
    }

    /// Words separated by spaces, `min..=max` bytes long (it may end a word past `max`).
    pub fn text(&mut self, min: usize, max: usize) -> String {
        let target = self.range(min, max);
        let mut s = String::with_capacity(target + 10);
        while s.len() < target {
            if !s.is_empty() {
                s.push(' ');
            }
            s.push_str(WORDS[self.below(WORDS.len())]);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::Rng;

    #[test]
    fn the_same_seed_gives_the_same_sequence() {
        let (mut a, mut b) = (Rng::new(42), Rng::new(42));
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
        assert_ne!(Rng::new(1).next_u64(), Rng::new(2).next_u64());
    }

    #[test]
    fn ranges_are_inclusive_and_bounded() {
        let mut r = Rng::new(7);
        let mut seen = [false; 3];
        for _ in 0..1000 {
            let x = r.range(2, 4);
            assert!((2..=4).contains(&x));
            seen[x - 2] = true;
            assert!(r.below(5) < 5);
            let u = r.unit();
            assert!((0.0..1.0).contains(&u));
        }
        assert_eq!(seen, [true; 3]);
        let t = r.text(10, 20);
        assert!(t.len() >= 10, "{t:?}");
    }
}
