/*
 * cuDNN recognises the attention graphs of lib/cuda/attention_cudnn.cu as
 * fused attention, without a GPU: both graphs (forward; backward in its
 * deterministic and fp32-accumulation forms) at the attention shapes of the
 * benchmark models, bidirectional and causal, are planned for a described
 * H200 (sm_90) and an engine's kernels must compile for each. A graph cuDNN does not take as
 * attention fails here with cuDNN's reason (e.g. "Flash attention bprop
 * needs a matmul to compute dK"). Shapes the module refuses by rule (fp32,
 * T not a multiple of 128 before cuDNN 9.16) must be refused with their
 * reason.
 *
 * Also the choice of attention the planner and the backend share
 * (insitra_gpu_sdpa_choice): auto takes cuDNN's deterministic backward at
 * the M shape (dP buffer 0.375 GiB) and not at B1 H12 T16384 (6 GiB), the
 * environment variable forces either way, fp32 never.
 *
 * Loading compiled kernels needs a driver: CTest puts CUDA's stub libcuda
 * first on the library path (tests/CMakeLists.txt), so no GPU is used even
 * where there is one. Without any libcuda cuDNN offers no engine and this
 * test fails, saying so.
 */
#include <cudnn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda/attention_cudnn.cuh"
#include "gpu_sizes.h"

/* The fields cuDNN 9's device-properties JSON reader asks for, with an
 * H200 SXM's values (cudaGetDeviceProperties on the lent machine's kind). */
static const char *h200 =
    "{\"cudaDeviceId\":0,\"deviceName\":\"NVIDIA H200\",\"deviceVer\":900,\"driverVer\":13000,"
    "\"isTccDriver\":0,\"l2CacheSize\":52428800,\"maxCtasPerSM\":32,\"maxRegistersPerSM\":65536,"
    "\"maxSharedMemoryPerBlock\":49152,\"maxSharedMemoryPerBlockOptin\":232448,\"maxThreadsPerBlock\":1024,"
    "\"maxThreadsPerSM\":2048,\"memClockRateKHz\":3201000,\"multiProcessorCount\":132,\"pciDeviceId\":0,"
    "\"regsPerBlock\":65536,\"reservedSharedMemoryPerBlock\":1024,\"smClockRateKHz\":1980000,"
    "\"supportCoopLaunch\":1,\"totalGlobalMem\":150754820096,\"warpSize\":32,"
    "\"maxGridSize\":[2147483647,65535,65535],\"maxBlockSize\":[1024,1024,64]}";

static int failures;

static void plan(int64_t B, int64_t T, int64_t C, int64_t H, bool causal, bool bf16, bool deterministic,
                 const char *refusal)
{
    const insitra_attention_shape sh = {B, T, C, H, causal, bf16};
    char line[256];
    const insitra_status st = insitra_cudnn_attention_plan_offline(&sh, deterministic, h200, line, sizeof line);
    const int good = refusal ? st != INSITRA_STATUS_OK && strstr(insitra_last_error(), refusal) != NULL
                             : st == INSITRA_STATUS_OK;
    printf("%s B=%lld T=%lld C=%lld H=%lld causal=%d %s %s: %s\n", good ? "ok  " : "FAIL", (long long)B,
           (long long)T, (long long)C, (long long)H, (int)causal, bf16 ? "bf16" : "fp32",
           deterministic ? "deterministic" : "fp32-dQ", st == INSITRA_STATUS_OK ? line : insitra_last_error());
    if (!good) failures++;
}

static void choice(const char *env, int64_t B, int64_t T, size_t act_size, insitra_gpu_sdpa want)
{
    insitra_model_dims d;
    memset(&d, 0, sizeof d);
    d.seq_len = T, d.d_model = 768, d.n_heads = 12;
    if (env) setenv("INSITRA_GPU_ATTENTION", env, 1);
    else unsetenv("INSITRA_GPU_ATTENTION");
    const insitra_gpu_sdpa got = insitra_gpu_sdpa_choice(&d, B, act_size);
    const int64_t bytes = insitra_gpu_sdpa_bytes(B, 12, T, 64, got);
    const int good = got == want && (got == INSITRA_GPU_SDPA_NONE) == (bytes == 0);
    printf("%s INSITRA_GPU_ATTENTION=%s B=%lld T=%lld act_size=%zu: choice %d (want %d), %lld bytes\n",
           good ? "ok  " : "FAIL", env ? env : "(unset)", (long long)B, (long long)T, act_size, (int)got,
           (int)want, (long long)bytes);
    if (!good) failures++;
}

int main(void)
{
    choice(NULL, 16, 1024, 2, INSITRA_GPU_SDPA_DETERMINISTIC);
    choice("auto", 1, 16384, 2, INSITRA_GPU_SDPA_NONE);
    choice("cudnn", 1, 16384, 2, INSITRA_GPU_SDPA_DETERMINISTIC);
    choice("cudnn-fast", 16, 1024, 2, INSITRA_GPU_SDPA_FAST);
    choice("fused", 16, 1024, 2, INSITRA_GPU_SDPA_NONE);
    choice("cudnn", 16, 1024, 4, INSITRA_GPU_SDPA_NONE);
    unsetenv("INSITRA_GPU_ATTENTION");
    const size_t version = cudnnGetVersion();
    printf("cuDNN %zu\n", version);
    if (version < 90800) {
        printf("cuDNN before 9.8 cannot plan without a GPU: skipped\n");
        return 77;
    }
    /* each plan compiles kernels (seconds): the benchmark shapes S (hd 32)
     * and M (hd 64; L differs in heads only), both backward graphs, hd 128 */
    plan(16, 256, 128, 4, false, true, true, NULL);
    plan(16, 1024, 768, 12, false, true, true, NULL);
    plan(16, 1024, 768, 12, true, true, true, NULL);
    plan(16, 1024, 768, 12, true, true, false, NULL);
    plan(2, 512, 512, 4, true, true, true, NULL);
    plan(2, 200, 256, 4, true, true, true, version < 91600 ? "multiple of 128" : NULL);
    plan(2, 256, 256, 4, false, false, true, "bf16 only");
    plan(2, 256, 80, 4, false, true, true, "head size 20");
    printf("%d failures\n", failures);
    return failures ? 1 : 0;
}
