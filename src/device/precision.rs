//! Number formats (`--precision`): where a device stores 16 bits, and the
//! dynamic loss scale that keeps fp16 gradients in range. Mixed precision
//! keeps the weights and momentum in f32 (the master copy the update
//! changes) and stores 16-bit copies of the weights, every activation and
//! every gradient; arithmetic, reductions, the softmax and the loss stay in
//! f32 or wider.

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use serde::{Deserialize, Serialize};

/// What `--precision` asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Exact f32 everywhere.
    #[default]
    Fp32,
    /// f32 storage; a GPU's tensor cores may round matrix inputs to TF32.
    /// The CPU has no TF32: it computes exact f32.
    Tf32,
    /// bfloat16 storage, f32 master weights; no loss scaling.
    Bf16,
    /// IEEE half storage, f32 master weights, dynamic loss scaling.
    Fp16,
}

impl Precision {
    /// How buffers are stored at this precision.
    pub fn storage(self) -> Storage {
        match self {
            Precision::Fp32 | Precision::Tf32 => Storage::Full,
            Precision::Bf16 => Storage::Bf16,
            Precision::Fp16 => Storage::F16,
        }
    }

    /// The flag's spelling.
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Tf32 => "tf32",
            Precision::Bf16 => "bf16",
            Precision::Fp16 => "fp16",
        }
    }
}

/// How a device stores activations, their gradients, weight gradients and
/// the weight copies the passes read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    /// The device's own float type (f32, or f64 in the reference checks).
    #[default]
    Full,
    /// bfloat16: f32's exponent, 8 significant bits.
    Bf16,
    /// IEEE binary16: 11 significant bits, largest finite value 65504.
    F16,
}

impl Storage {
    /// `x` as this storage keeps it: rounded to nearest, ties to even (the
    /// `half` crate's conversions, as CUDA's `__float2bfloat16_rn` and
    /// `__float2half_rn` round); beyond fp16's range, ±∞.
    pub fn round(self, x: f32) -> f32 {
        match self {
            Storage::Full => x,
            Storage::Bf16 => bf16::from_f32(x).to_f32(),
            Storage::F16 => f16::from_f32(x).to_f32(),
        }
    }

    /// `x`'s place on the line of this storage's values, in steps from
    /// zero (negative below it), after rounding `x` to the storage: two
    /// values' difference is how many 16-bit steps lie between them. The
    /// full storage counts f32 steps.
    pub fn steps_from_zero(self, x: f32) -> i64 {
        let (magnitude, negative) = match self {
            Storage::Full => (i64::from(x.to_bits() & 0x7fff_ffff), x.is_sign_negative()),
            Storage::Bf16 => {
                let bits = bf16::from_f32(x).to_bits();
                (i64::from(bits & 0x7fff), bits & 0x8000 != 0)
            }
            Storage::F16 => {
                let bits = f16::from_f32(x).to_bits();
                (i64::from(bits & 0x7fff), bits & 0x8000 != 0)
            }
        };
        if negative { -magnitude } else { magnitude }
    }

    /// Whether this storage is narrower than the device's own type.
    pub fn is_16_bit(self) -> bool {
        self != Storage::Full
    }

    /// Rounds every element of `x` as [`Storage::round`] rounds one, a
    /// slice at a time: bf16 by an integer rounding the compiler
    /// vectorizes, fp16 by the `half` crate's slice conversions (F16C
    /// where the CPU has it).
    pub fn round_slice(self, x: &mut [f32]) {
        match self {
            Storage::Full => {}
            Storage::Bf16 => x.iter_mut().for_each(|v| *v = round_bf16(*v)),
            Storage::F16 => {
                let mut narrow = [f16::ZERO; 256];
                for chunk in x.chunks_mut(256) {
                    let narrow = &mut narrow[..chunk.len()];
                    narrow.convert_from_f32_slice(chunk);
                    narrow.convert_to_f32_slice(chunk);
                }
            }
        }
    }
}

/// `x` rounded to bf16 (nearest, ties to even) and widened again, without
/// branches: the carry of `0x7FFF` plus the kept part's lowest bit rounds
/// the upper half; a NaN stays a quiet NaN, as `half::bf16::from_f32` keeps it.
fn round_bf16(x: f32) -> f32 {
    let bits = x.to_bits();
    let rounded = bits.wrapping_add(0x7FFF + ((bits >> 16) & 1)) & 0xFFFF_0000;
    let quiet_nan = (bits & 0xFFFF_0000) | 0x0040_0000;
    let is_nan = bits & 0x7FFF_FFFF > 0x7F80_0000;
    f32::from_bits(if is_nan { quiet_nan } else { rounded })
}

/// fp16's dynamic loss scale (Micikevicius et al. 2018): the loss gradient
/// is multiplied by `scale` so that small gradients survive 16 bits; a step
/// whose gradients overflow is skipped and the scale halves; after
/// [`LossScale::GROWTH_INTERVAL`] good steps in a row it doubles. Powers of
/// two only, so that scaling and unscaling are exact.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LossScale {
    pub scale: f32,
    /// Good steps since the scale last changed.
    pub good_steps: u32,
}

impl LossScale {
    /// The first scale, 2¹⁶ (PyTorch's `GradScaler` default).
    pub const INITIAL: f32 = 65536.0;
    /// Good steps in a row before the scale doubles.
    pub const GROWTH_INTERVAL: u32 = 2000;
    /// The scale never halves below this.
    pub const SMALLEST: f32 = 1.0;
    /// Nor doubles above this (2⁶⁴, far beyond any useful scale).
    pub const LARGEST: f32 = 18_446_744_073_709_551_616.0;

    /// A fresh scale at [`LossScale::INITIAL`].
    pub fn new() -> LossScale {
        LossScale::starting_at(LossScale::INITIAL)
    }

    /// A fresh scale at `scale`.
    pub fn starting_at(scale: f32) -> LossScale {
        LossScale {
            scale,
            good_steps: 0,
        }
    }

    /// The scale after a step whose gradients were all finite (`applied`)
    /// or overflowed (skipped).
    pub fn after(self, applied: bool) -> LossScale {
        if !applied {
            return LossScale {
                scale: (self.scale / 2.0).max(LossScale::SMALLEST),
                good_steps: 0,
            };
        }
        let good_steps = self.good_steps + 1;
        if good_steps >= LossScale::GROWTH_INTERVAL {
            LossScale {
                scale: (self.scale * 2.0).min(LossScale::LARGEST),
                good_steps: 0,
            }
        } else {
            LossScale {
                scale: self.scale,
                good_steps,
            }
        }
    }
}

impl Default for LossScale {
    fn default() -> Self {
        LossScale::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_from_zero_count_each_storages_values() {
        // 1.0 is bf16 0x3f80 and fp16 0x3c00; fp16's largest is 0x7bff.
        assert_eq!(Storage::Bf16.steps_from_zero(1.0), 0x3f80);
        assert_eq!(Storage::Bf16.steps_from_zero(1.0 + 1.0 / 128.0), 0x3f81);
        assert_eq!(Storage::F16.steps_from_zero(-1.0), -0x3c00);
        assert_eq!(Storage::F16.steps_from_zero(65504.0), 0x7bff);
        assert_eq!(
            Storage::Full.steps_from_zero(f32::MIN_POSITIVE),
            0x0080_0000
        );
        for storage in [Storage::Full, Storage::Bf16, Storage::F16] {
            assert_eq!(storage.steps_from_zero(0.0), 0);
            assert_eq!(storage.steps_from_zero(-0.0), 0);
        }
    }

    #[test]
    fn a_slice_rounds_bit_for_bit_as_the_half_crate_rounds_each_value() {
        // Every bf16 tie and carry lives in the low 16 bits, fp16's in the
        // low 13 and the exponent: patterns spread over all 2³² bit strings
        // plus the edges (±0, subnormals, the largest finite values, ±∞, NaN).
        let mut bits: Vec<u32> = (0..1_000_000u64)
            .map(|i| (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as u32)
            .collect();
        bits.extend([0, 1, 0x8000_0000, 0x0080_0000, 0x7F7F_FFFF, 0x7F7F_8000]);
        bits.extend([
            0x7F80_0000,
            0xFF80_0000,
            0x7FC0_0001,
            0x7F80_0001,
            0x477F_E000,
        ]);
        bits.extend([
            0x477F_F000,
            0x3380_0000,
            0x3300_0001,
            0x3F80_8000,
            0x3F81_8000,
        ]);
        for storage in [Storage::Bf16, Storage::F16] {
            let mut x: Vec<f32> = bits.iter().map(|&b| f32::from_bits(b)).collect();
            storage.round_slice(&mut x);
            for (&b, got) in bits.iter().zip(&x) {
                let want = storage.round(f32::from_bits(b));
                assert!(
                    want.to_bits() == got.to_bits() || (want.is_nan() && got.is_nan()),
                    "{storage:?} of {b:#010x}: {got:e} against {want:e}"
                );
            }
        }
    }

    #[test]
    fn bf16_keeps_eight_significant_bits_rounding_ties_to_even() {
        let b = Storage::Bf16;
        // 1 + 2⁻⁷ is representable; 1 + 2⁻⁸ is halfway between 1 and
        // 1 + 2⁻⁷ and goes to the even one, 1; 1 + 3·2⁻⁸ is halfway between
        // 1 + 2⁻⁷ and 1 + 2⁻⁶ and goes to 1 + 2⁻⁶.
        assert_eq!(b.round(1.0 + 2f32.powi(-7)), 1.0 + 2f32.powi(-7));
        assert_eq!(b.round(1.0 + 2f32.powi(-8)), 1.0);
        assert_eq!(b.round(1.0 + 3.0 * 2f32.powi(-8)), 1.0 + 2f32.powi(-6));
        assert_eq!(
            b.round(1.0 + 2f32.powi(-8) + 2f32.powi(-20)),
            1.0 + 2f32.powi(-7)
        );
        // f32's exponent range: 2¹⁰⁰ · (1 + 2⁻⁸) ties down to 2¹⁰⁰, finite.
        let big = 2f32.powi(100);
        assert_eq!(b.round(big * (1.0 + 2f32.powi(-8))), big);
    }

    #[test]
    fn fp16_keeps_eleven_significant_bits_and_overflows_past_65504() {
        let h = Storage::F16;
        assert_eq!(h.round(1.0 + 2f32.powi(-10)), 1.0 + 2f32.powi(-10));
        assert_eq!(h.round(1.0 + 2f32.powi(-11)), 1.0);
        assert_eq!(h.round(65504.0), 65504.0);
        // Halfway to the next binade's first step rounds to infinity.
        assert_eq!(h.round(65520.0), f32::INFINITY);
        assert_eq!(h.round(-70000.0), f32::NEG_INFINITY);
        // The smallest subnormal, 2⁻²⁴, survives; half of it ties to 0.
        assert_eq!(h.round(2f32.powi(-24)), 2f32.powi(-24));
        assert_eq!(h.round(2f32.powi(-25)), 0.0);
        assert_eq!(
            Storage::Full.round(1.0 + 2f32.powi(-20)),
            1.0 + 2f32.powi(-20)
        );
    }

    #[test]
    fn the_loss_scale_halves_on_overflow_and_doubles_after_a_run_of_good_steps() {
        let start = LossScale::new();
        let dropped = start.after(false);
        assert_eq!(dropped.scale, LossScale::INITIAL / 2.0);
        let mut s = dropped;
        for _ in 0..LossScale::GROWTH_INTERVAL - 1 {
            s = s.after(true);
        }
        assert_eq!(s.scale, LossScale::INITIAL / 2.0);
        assert_eq!(s.good_steps, LossScale::GROWTH_INTERVAL - 1);
        s = s.after(true);
        assert_eq!((s.scale, s.good_steps), (LossScale::INITIAL, 0));
        let floor = LossScale {
            scale: 1.0,
            good_steps: 5,
        };
        assert_eq!(floor.after(false).scale, 1.0);
    }
}
