//! Run-time choice of instruction set for the element-wise and integer kernels.

/// Defines `fn $name` compiled twice: for AVX2+FMA (taken when the CPU has them, checked at run
/// time) and for the baseline target; the body is written once, as portable Rust, and the
/// compiler vectorizes it for each.
macro_rules! dispatch {
    ($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),*) $body:block) => {
        $(#[$doc])*
        pub(crate) fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn generic($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) {
                    generic($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU has the features `avx2` was compiled for.
                    #[allow(unsafe_code)]
                    return unsafe { avx2($($arg),*) };
                }
            }
            generic($($arg),*)
        }
    };
}

/// Which kernels the packed CPU encoder runs on this CPU, in words: AVX2 + FMA tiles (f32) and
/// AVX2 16-bit integer products (int8) where the CPU has them, else portable Rust.
pub fn instruction_set() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        let avx2 = std::arch::is_x86_feature_detected!("avx2");
        let fma = std::arch::is_x86_feature_detected!("fma");
        match (avx2, fma) {
            (true, true) => return "AVX2+FMA (f32 tiles), AVX2 vpmaddwd (int8)",
            (true, false) => return "portable f32 (no FMA), AVX2 vpmaddwd (int8)",
            _ => {}
        }
    }
    "portable Rust (no AVX2): expect several times slower encoding"
}
