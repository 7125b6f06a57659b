//! Picking the widest vector instructions the CPU has, at run time.

/// Runs the body compiled for AVX2 + FMA when the CPU has them (runtime check, cached by std),
/// else for the baseline target: the default x86-64 target has only SSE2, half the vector width.
macro_rules! with_best_simd {
    ($vis:vis $name:ident, fn($($arg:ident: $ty:ty),*) $body:block) => {
        $vis fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) {
                    body($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU has the features `avx2` was compiled for.
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}
pub(crate) use with_best_simd;
