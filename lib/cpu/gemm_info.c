/*
 * Which library runs the CPU's matrix products, and with which kernels.
 * A CBLAS build may link any provider (Spack passes one by path), so the
 * provider is recognised at run time by its own query functions, referenced
 * weakly: each is NULL unless that library is linked.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gemm.h"

#if defined(INSITRA_CPU_GEMM_ONEDNN)
#include <oneapi/dnnl/dnnl.h>
#endif

#if defined(__GNUC__)
#define WEAK __attribute__((weak))
#else
#define WEAK
#endif

/* OpenBLAS */
extern char *openblas_get_config(void) WEAK;
extern char *openblas_get_corename(void) WEAK;
extern int openblas_get_num_threads(void) WEAK;
/* BLIS (arch_t is an enum) */
extern char *bli_info_get_version_str(void) WEAK;
extern int bli_arch_query_id(void) WEAK;
extern char *bli_arch_string(int id) WEAK;
extern long bli_thread_get_num_threads(void) WEAK;

#if defined(INSITRA_CPU_GEMM_ONEDNN)
static const char *onednn_isa_name(dnnl_cpu_isa_t isa)
{
    switch (isa) {
    case dnnl_cpu_isa_sse41: return "sse41";
    case dnnl_cpu_isa_avx: return "avx";
    case dnnl_cpu_isa_avx2: return "avx2";
    case dnnl_cpu_isa_avx2_vnni: return "avx2_vnni";
    case dnnl_cpu_isa_avx512_core: return "avx512_core";
    case dnnl_cpu_isa_avx512_core_vnni: return "avx512_core_vnni";
    case dnnl_cpu_isa_avx512_core_bf16: return "avx512_core_bf16";
    case dnnl_cpu_isa_avx512_core_amx: return "avx512_core_amx";
    default: return "other";
    }
}
#endif

void insitra_blas_info_get(insitra_gemm_info *info)
{
    memset(info, 0, sizeof *info);
    if (openblas_get_config && openblas_get_corename) {
        /* The configuration string begins "OpenBLAS 0.3.21 ...". */
        char version[32] = "";
        sscanf(openblas_get_config(), "OpenBLAS %31s", version);
        snprintf(info->provider, sizeof info->provider, "OpenBLAS %s", version);
        snprintf(info->kernel, sizeof info->kernel, "%s", openblas_get_corename());
        const char *forced = getenv("OPENBLAS_CORETYPE");
        info->kernel_from_env = forced && *forced;
        info->threads = openblas_get_num_threads ? openblas_get_num_threads() : 0;
    } else if (bli_info_get_version_str) {
        snprintf(info->provider, sizeof info->provider, "BLIS %s", bli_info_get_version_str());
        if (bli_arch_query_id && bli_arch_string)
            snprintf(info->kernel, sizeof info->kernel, "%s", bli_arch_string(bli_arch_query_id()));
        info->threads = bli_thread_get_num_threads ? (int)bli_thread_get_num_threads() : 0;
    } else {
        snprintf(info->provider, sizeof info->provider, "CBLAS (provider not recognised)");
    }
}

void insitra_gemm_info_get(insitra_gemm_info *info)
{
#if defined(INSITRA_CPU_GEMM_ONEDNN)
    memset(info, 0, sizeof *info);
    const dnnl_version_t *v = dnnl_version();
    snprintf(info->provider, sizeof info->provider, "oneDNN %d.%d.%d", v->major, v->minor, v->patch);
    snprintf(info->kernel, sizeof info->kernel, "%s", onednn_isa_name(dnnl_get_effective_cpu_isa()));
    info->threads = 0; /* OpenMP's: omp_get_max_threads() */
#else
    insitra_blas_info_get(info);
#endif
}

/* ---- the kernel against the CPU ---- */

/* Vector widths, narrowest first: what a kernel set uses, what a CPU has. */
enum { VEC_UNKNOWN, VEC_SSE, VEC_AVX, VEC_AVX2, VEC_AVX512 };
static const char *const vec_names[] = {"unknown", "SSE", "AVX", "AVX2", "AVX-512"};

typedef struct kernel_width {
    const char *name;
    int width;
} kernel_width;

/* OpenBLAS's x86-64 core names (openblas_get_corename, OPENBLAS_CORETYPE). */
/* clang-format off */
static const kernel_width openblas_kernels[] = {
    {"SapphireRapids", VEC_AVX512}, {"Cooperlake", VEC_AVX512}, {"SkylakeX", VEC_AVX512},
    {"Haswell", VEC_AVX2}, {"Zen", VEC_AVX2},
    {"Sandybridge", VEC_AVX}, {"Bulldozer", VEC_AVX}, {"Piledriver", VEC_AVX},
    {"Steamroller", VEC_AVX}, {"Excavator", VEC_AVX},
    {"Prescott", VEC_SSE}, {"Core2", VEC_SSE}, {"Penryn", VEC_SSE}, {"Dunnington", VEC_SSE},
    {"Nehalem", VEC_SSE}, {"Atom", VEC_SSE}, {"Barcelona", VEC_SSE}, {"Opteron", VEC_SSE},
    {"Opteron(SSE3)", VEC_SSE}, {"Bobcat", VEC_SSE}, {"Nano", VEC_SSE}, {"Generic", VEC_SSE},
};
/* BLIS's x86-64 sub-configurations (bli_arch_string). */
static const kernel_width blis_kernels[] = {
    {"skx", VEC_AVX512}, {"knl", VEC_AVX512}, {"zen4", VEC_AVX512},
    {"haswell", VEC_AVX2}, {"zen", VEC_AVX2}, {"zen2", VEC_AVX2}, {"zen3", VEC_AVX2},
    {"sandybridge", VEC_AVX}, {"bulldozer", VEC_AVX}, {"piledriver", VEC_AVX},
    {"steamroller", VEC_AVX}, {"excavator", VEC_AVX},
    {"penryn", VEC_SSE}, {"generic", VEC_SSE},
};
/* clang-format on */
/* The OpenBLAS core to name in the advice for each CPU width. */
static const char *const openblas_fix[] = {"", "", "Sandybridge", "Haswell", "SkylakeX"};

static int has_word(const char *list, const char *word)
{
    const size_t n = strlen(word);
    for (const char *p = list; (p = strstr(p, word)) != NULL; p += n)
        if ((p == list || p[-1] == ' ' || p[-1] == '\t') &&
            (p[n] == '\0' || p[n] == ' ' || p[n] == '\t' || p[n] == '\n'))
            return 1;
    return 0;
}

static int cpu_width(const char *flags)
{
    if (has_word(flags, "avx512f")) return VEC_AVX512;
    if (has_word(flags, "avx2") && has_word(flags, "fma")) return VEC_AVX2;
    if (has_word(flags, "avx")) return VEC_AVX;
    if (has_word(flags, "sse2")) return VEC_SSE;
    return VEC_UNKNOWN;
}

static int table_width(const kernel_width *t, size_t n, const char *kernel)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(t[i].name, kernel) == 0) return t[i].width;
    return VEC_UNKNOWN;
}

/* oneDNN's instruction-set names as insitra_gemm_info_get writes them. */
static int onednn_width(const char *isa)
{
    if (strncmp(isa, "avx512", 6) == 0) return VEC_AVX512;
    if (strncmp(isa, "avx2", 4) == 0) return VEC_AVX2;
    if (strcmp(isa, "avx") == 0) return VEC_AVX;
    if (strcmp(isa, "sse41") == 0) return VEC_SSE;
    return VEC_UNKNOWN;
}

bool insitra_gemm_kernel_advice(const char *provider, const char *kernel, const char *cpu_flags, char *advice,
                                size_t size)
{
    if (size) advice[0] = '\0';
    if (!provider || !kernel || !cpu_flags) return false;
    const int have = cpu_width(cpu_flags);
    int uses = VEC_UNKNOWN;
    enum { OPENBLAS, BLIS, ONEDNN, OTHER } lib = OTHER;
    if (strncmp(provider, "OpenBLAS", 8) == 0) {
        lib = OPENBLAS;
        uses = table_width(openblas_kernels, sizeof openblas_kernels / sizeof *openblas_kernels, kernel);
    } else if (strncmp(provider, "BLIS", 4) == 0) {
        lib = BLIS;
        uses = table_width(blis_kernels, sizeof blis_kernels / sizeof *blis_kernels, kernel);
    } else if (strncmp(provider, "oneDNN", 6) == 0) {
        lib = ONEDNN;
        uses = onednn_width(kernel);
    }
    if (have == VEC_UNKNOWN || uses == VEC_UNKNOWN || uses >= have) return false;
    int n = snprintf(advice, size,
                     "insitra: warning: %s runs its %s kernels (%s) on a CPU with %s: the CPU "
                     "backend's matrix products run at a fraction of this CPU's rate. ",
                     provider, kernel, vec_names[uses], vec_names[have]);
    if (n < 0 || (size_t)n >= size) return true;
    if (lib == OPENBLAS)
        snprintf(advice + n, size - (size_t)n,
                 "Fix: set OPENBLAS_CORETYPE=%s in the job's environment (it does not know this "
                 "CPU).",
                 openblas_fix[have]);
    else if (lib == ONEDNN)
        snprintf(advice + n, size - (size_t)n,
                 "Fix: unset ONEDNN_MAX_CPU_ISA (or DNNL_MAX_CPU_ISA) if the job sets it, or use "
                 "a newer oneDNN.");
    else
        snprintf(advice + n, size - (size_t)n,
                 "Fix: use a %s build that knows this CPU, or link OpenBLAS (OPENBLAS_CORETYPE "
                 "names the kernels when it does not know the CPU).",
                 lib == BLIS ? "BLIS" : "BLAS");
    return true;
}

void insitra_cpu_flags(char *flags, size_t size)
{
    if (size) flags[0] = '\0';
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f) return;
    char line[4096];
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "flags", 5) != 0) continue;
        const char *colon = strchr(line, ':');
        if (colon) snprintf(flags, size, "%s", colon + 1 + (colon[1] == ' '));
        break;
    }
    fclose(f);
    const size_t n = strlen(flags);
    if (n && flags[n - 1] == '\n') flags[n - 1] = '\0';
}

void insitra_gemm_warn_narrow(int rank)
{
    static int warned; /* once per process: a job may create several trainers */
    if (rank != 0 || warned) return;
    warned = 1;
    char flags[4096], advice[512];
    insitra_cpu_flags(flags, sizeof flags);
    insitra_gemm_info gemm, blas;
    insitra_gemm_info_get(&gemm);
    insitra_blas_info_get(&blas);
    /* The linear layers' provider first, then the CBLAS that attention calls
     * when it is another library; one line in all. */
    if (insitra_gemm_kernel_advice(gemm.provider, gemm.kernel, flags, advice, sizeof advice)) {
        fprintf(stderr, "%s\n", advice);
        fflush(stderr);
    } else if (strcmp(gemm.provider, blas.provider) != 0 &&
               insitra_gemm_kernel_advice(blas.provider, blas.kernel, flags, advice, sizeof advice)) {
        /* only attention's products are slow: say so, the linear layers are fine */
        fprintf(stderr, "%s (%s serves attention's products here; the linear layers run on %s, %s kernels.)\n",
                advice, blas.provider, gemm.provider, gemm.kernel);
        fflush(stderr);
    }
}
