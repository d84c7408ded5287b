// CPU build helpers for the vectorised hot loops.
#pragma once

// The extension is built for the baseline ISA (like torch's default kernels); hot loops get
// AVX-512 and AVX2 clones chosen at load time by the CPU they run on.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define FO_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#define FO_ALWAYS_INLINE __attribute__((always_inline)) inline
#else
#define FO_CPU_CLONES
#define FO_ALWAYS_INLINE inline
#endif
