//! The float types the CPU kernels are generic over: f32 for training, f64
//! for the finite-difference checks of the same code.

use num_traits::Float;

/// f32 or f64.
pub trait Real:
    Float + Default + Send + Sync + std::fmt::Debug + std::iter::Sum + std::ops::AddAssign + 'static
{
    /// Converts from f64 (rounding for f32).
    fn of(x: f64) -> Self;
    /// Widens to f64.
    fn wide(self) -> f64;
}

impl Real for f32 {
    fn of(x: f64) -> Self {
        x as f32
    }
    fn wide(self) -> f64 {
        f64::from(self)
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
