//! Kernels compiled three times, for AVX-512, for AVX2 and for the baseline
//! x86-64 (or whatever the target is), the widest the CPU has chosen at run
//! time, so the same binary runs anywhere. Only the instruction width
//! changes: no multiply is fused into an add the code does not write, so
//! results are bitwise the same on every path.

/// Whether the CPU runs the AVX-512 build of a kernel.
#[cfg(target_arch = "x86_64")]
pub fn has_v4() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512dq")
        && std::arch::is_x86_feature_detected!("avx512vl")
}

/// Whether the CPU runs the AVX2 build of a kernel.
#[cfg(target_arch = "x86_64")]
pub fn has_v3() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

/// Defines `pub fn name<T: Real>(args)` (or with further type parameters,
/// each of one bound) whose body is built for each instruction set and
/// dispatched to the widest one present.
macro_rules! kernel {
    ($(#[$meta:meta])* pub fn $name:ident<T: Real $(, $g:ident: $bound:ident)*>($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$meta])*
        pub fn $name<T: Real $(, $g: $bound)*>($($arg: $ty),*) {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn body<T: Real $(, $g: $bound)*>($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(
                    enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,bmi1,bmi2,lzcnt,popcnt"
                )]
                #[allow(clippy::too_many_arguments)]
                unsafe fn v4<T: Real $(, $g: $bound)*>($($arg: $ty),*) {
                    body::<T $(, $g)*>($($arg),*)
                }
                #[target_feature(enable = "avx2,fma,bmi1,bmi2,lzcnt,popcnt")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn v3<T: Real $(, $g: $bound)*>($($arg: $ty),*) {
                    body::<T $(, $g)*>($($arg),*)
                }
                if $crate::device::cpu::simd::has_v4() {
                    // SAFETY: the CPU has every feature `v4` enables.
                    return unsafe { v4::<T $(, $g)*>($($arg),*) };
                }
                if $crate::device::cpu::simd::has_v3() {
                    // SAFETY: the CPU has every feature `v3` enables.
                    return unsafe { v3::<T $(, $g)*>($($arg),*) };
                }
            }
            body::<T $(, $g)*>($($arg),*)
        }
    };
}

pub(crate) use kernel;
