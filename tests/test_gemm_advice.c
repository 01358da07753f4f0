/*
 * The GEMM kernel check (lib/cpu/gemm.h) on made-up machines: a library's
 * kernel name and a CPU's flags in, a warning with the fix out, or none.
 * Also the real machine once, so the probes run: its verdict is printed,
 * not checked (it depends on the machine).
 */
#include <stdio.h>
#include <string.h>

#include "cpu/gemm.h"
#include "test_util.h"

static const char *const AVX512 = "fpu sse sse2 pni ssse3 fma sse4_1 avx f16c avx2 avx512f avx512dq";
static const char *const AVX2 = "fpu sse sse2 pni ssse3 fma sse4_1 avx f16c avx2";
static const char *const AVX_ONLY = "fpu sse sse2 pni ssse3 sse4_1 avx";
/* avx512f only as part of another word: not AVX-512. */
static const char *const LOOKALIKE = "fpu sse sse2 avx avx2 fma avx512fx_fake";

static void expect_advice(insitra_test *t, const char *provider, const char *kernel, const char *flags,
                          bool want, const char *must_contain)
{
    char advice[512];
    const bool got = insitra_gemm_kernel_advice(provider, kernel, flags, advice, sizeof advice);
    EXPECT(t, got == want, "%s %s on [%s]: advice %d, expected %d (%s)", provider, kernel, flags, got, want,
           advice);
    if (want && must_contain)
        EXPECT(t, strstr(advice, must_contain) != NULL, "%s %s: advice lacks '%s': %s", provider, kernel,
               must_contain, advice);
    if (!want) EXPECT(t, advice[0] == '\0', "no advice expected, got '%s'", advice);
}

int main(int argc, char **argv)
{
    insitra_test t = insitra_test_begin(&argc, &argv, "gemm_advice");

    /* The lent Xeon: OpenBLAS 0.3.21 does not know it and takes Prescott. */
    expect_advice(&t, "OpenBLAS 0.3.21", "Prescott", AVX512, true, "OPENBLAS_CORETYPE=SkylakeX");
    expect_advice(&t, "OpenBLAS 0.3.21", "Prescott", AVX2, true, "OPENBLAS_CORETYPE=Haswell");
    expect_advice(&t, "OpenBLAS 0.3.21", "Prescott", AVX_ONLY, true, "OPENBLAS_CORETYPE=Sandybridge");
    expect_advice(&t, "OpenBLAS 0.3.21", "Haswell", AVX512, true, "SkylakeX");
    /* Kernels as wide as the CPU, or wider names of the same class: quiet. */
    expect_advice(&t, "OpenBLAS 0.3.21", "SkylakeX", AVX512, false, NULL);
    expect_advice(&t, "OpenBLAS 0.3.21", "Cooperlake", AVX512, false, NULL);
    expect_advice(&t, "OpenBLAS 0.3.21", "Haswell", AVX2, false, NULL);
    expect_advice(&t, "OpenBLAS 0.3.21", "Zen", AVX2, false, NULL);
    expect_advice(&t, "OpenBLAS 0.3.21", "Prescott", "fpu sse sse2 pni", false, NULL);
    /* Whole words only. */
    expect_advice(&t, "OpenBLAS 0.3.21", "Haswell", LOOKALIKE, false, NULL);
    /* Unknown kernel names, providers or CPUs: no verdict rather than a wrong one. */
    expect_advice(&t, "OpenBLAS 0.3.30", "FutureLake", AVX512, false, NULL);
    expect_advice(&t, "CBLAS (provider not recognised)", "", AVX512, false, NULL);
    expect_advice(&t, "OpenBLAS 0.3.21", "Prescott", "", false, NULL);
    /* BLIS and oneDNN. */
    expect_advice(&t, "BLIS 0.9.0", "generic", AVX512, true, "BLIS");
    expect_advice(&t, "BLIS 0.9.0", "zen3", AVX2, false, NULL);
    expect_advice(&t, "BLIS 0.9.0", "skx", AVX512, false, NULL);
    expect_advice(&t, "oneDNN 2.6.3", "avx2", AVX512, true, "ONEDNN_MAX_CPU_ISA");
    expect_advice(&t, "oneDNN 2.6.3", "avx512_core_amx", AVX512, false, NULL);
    /* A short buffer is cut, never overrun. */
    char small[16];
    EXPECT(&t, insitra_gemm_kernel_advice("OpenBLAS 0.3.21", "Prescott", AVX512, small, sizeof small),
           "a short buffer still gives the verdict");
    EXPECT(&t, strlen(small) < sizeof small, "advice cut to the buffer");

    /* This machine: the probes run; what they say is printed for the log. */
    insitra_gemm_info gemm, blas;
    insitra_gemm_info_get(&gemm);
    insitra_blas_info_get(&blas);
    char flags[4096], advice[512];
    insitra_cpu_flags(flags, sizeof flags);
    EXPECT(&t, gemm.provider[0] != '\0' && blas.provider[0] != '\0', "a provider is named");
    const bool warn = insitra_gemm_kernel_advice(gemm.provider, gemm.kernel, flags, advice, sizeof advice);
    if (t.rank == 0)
        printf("this machine: GEMM %s (%s), CBLAS %s (%s): %s\n", gemm.provider, gemm.kernel, blas.provider,
               blas.kernel, warn ? advice : "kernels match the CPU");
    return insitra_test_end(&t);
}
