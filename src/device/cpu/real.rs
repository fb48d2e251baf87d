//! The float types the CPU kernels are generic over: f32 for training, f64
//! for the finite-difference checks of the same code.

use crate::device::precision::Storage;
use crate::net::plan::ConvShape;
use num_traits::Float;

/// f32 or f64.
pub trait Real:
    Float + Default + Send + Sync + std::fmt::Debug + std::iter::Sum + std::ops::AddAssign + 'static
{
    /// Converts from f64 (rounding for f32).
    fn of(x: f64) -> Self;
    /// Widens to f64.
    fn wide(self) -> f64;
    /// Rounds every element as `storage` keeps it (see [`super::round_all`]).
    fn round_slice(storage: Storage, x: &mut [Self]) {
        for v in x {
            *v = Self::of(f64::from(storage.round(v.wide() as f32)));
        }
    }
    /// Whether 3×3 stride-1 convolutions run by Winograd's F(2×2, 3×3)
    /// (`super::winograd`): in f32, for its fewer multiplies; not in f64,
    /// the reference, which keeps the definition's sums.
    const WINOGRAD: bool = false;
    /// `c += a · bᵀ` by a kernel for this type, if it has one here; false
    /// (and `c` untouched) otherwise. See [`super::matmul::matmul_nt`].
    fn matmul_nt_fast(
        m: usize,
        n: usize,
        k: usize,
        a: &[Self],
        b: &[Self],
        c: &mut [Self],
    ) -> bool {
        let _ = (m, n, k, a, b, c);
        false
    }
    /// `y = bias + conv(x, w)` by a direct kernel for this type and layer,
    /// if it has one here; false (and `y` untouched) otherwise. See
    /// [`super::direct`]; `scratch` is the kernel's to use.
    #[allow(clippy::too_many_arguments)]
    fn conv_forward_direct(
        x: &[Self],
        w: &[Self],
        bias: &[Self],
        y: &mut [Self],
        s: &ConvShape,
        batch: usize,
        scratch: &mut Vec<Self>,
    ) -> bool {
        let _ = (x, w, bias, y, s, batch, scratch);
        false
    }
    /// `dw` = the weight gradient of [`Real::conv_forward_direct`]'s layer
    /// by a direct kernel for this type and layer, if it has one here;
    /// false (and `dw` untouched) otherwise. See [`super::direct`].
    fn conv_backward_weights_direct(
        x: &[Self],
        dy: &[Self],
        dw: &mut [Self],
        s: &ConvShape,
        batch: usize,
        scratch: &mut Vec<Self>,
    ) -> bool {
        let _ = (x, dy, dw, s, batch, scratch);
        false
    }
}

impl Real for f32 {
    const WINOGRAD: bool = true;
    fn of(x: f64) -> Self {
        x as f32
    }
    fn wide(self) -> f64 {
        f64::from(self)
    }
    fn round_slice(storage: Storage, x: &mut [f32]) {
        storage.round_slice(x);
    }
    fn matmul_nt_fast(m: usize, n: usize, k: usize, a: &[f32], b: &[f32], c: &mut [f32]) -> bool {
        super::nt::matmul_nt_f32(m, n, k, a, b, c)
    }
    fn conv_forward_direct(
        x: &[f32],
        w: &[f32],
        bias: &[f32],
        y: &mut [f32],
        s: &ConvShape,
        batch: usize,
        scratch: &mut Vec<f32>,
    ) -> bool {
        super::direct::conv_forward_f32(x, w, bias, y, s, batch, scratch)
    }
    fn conv_backward_weights_direct(
        x: &[f32],
        dy: &[f32],
        dw: &mut [f32],
        s: &ConvShape,
        batch: usize,
        scratch: &mut Vec<f32>,
    ) -> bool {
        super::direct::conv_backward_weights_f32(x, dy, dw, s, batch, scratch)
    }
}

impl Real for f64 {
    fn of(x: f64) -> Self {
        x
    }
    fn wide(self) -> f64 {
        self
    }
}
