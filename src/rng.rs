//! Seedable, platform-independent random numbers. Every random draw in a run
//! (initialization, dropout masks, data order, synthetic images) derives from
//! the run's seed through [`mix`], so the same seed gives a bitwise identical
//! run whatever the thread timing.

/// SplitMix64's finalizer: a bijective 64-bit mixer.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A key for an independent stream, from a parent key and a label.
pub fn derive(key: u64, label: u64) -> u64 {
    mix(key ^ mix(label.wrapping_add(0x9e37_79b9_7f4a_7c15)))
}

/// A key from a parent key and a name (for named parameters).
pub fn derive_str(key: u64, name: &str) -> u64 {
    name.bytes().fold(key, |k, b| derive(k, u64::from(b)))
}

/// A uniform draw in [0, 1) at position `index` of the stream `key`
/// (counter-based: no state, any order).
pub fn uniform_at(key: u64, index: u64) -> f64 {
    (mix(key ^ mix(index)) >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// A sequential generator (SplitMix64).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// A generator for the stream `key`.
    pub fn new(key: u64) -> Self {
        Rng { state: mix(key) }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.state)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform integer in [0, n).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Fisher–Yates shuffle.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_draws_have_unit_variance() {
        let mut rng = Rng::new(7);
        let n = 200_000;
        let xs: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.01, "variance {var}");
    }

    #[test]
    fn uniform_at_is_uniform_and_keyed() {
        let n = 100_000;
        let mean = (0..n).map(|i| uniform_at(3, i)).sum::<f64>() / n as f64;
        assert!((mean - 0.5).abs() < 0.005, "mean {mean}");
        assert_ne!(uniform_at(3, 0), uniform_at(4, 0));
    }

    #[test]
    fn shuffle_is_a_permutation() {
        let mut v: Vec<usize> = (0..1000).collect();
        Rng::new(1).shuffle(&mut v);
        assert_ne!(v, (0..1000).collect::<Vec<_>>());
        v.sort();
        assert_eq!(v, (0..1000).collect::<Vec<_>>());
    }
}
