/*
 * The surrogate on the GPU (issue #19 item 1): one export, predicted by a
 * CPU fp32 surrogate and by GPU surrogates, must agree:
 *
 *   GPU fp32 against CPU fp32: 1e-4 of the largest output (summation orders
 *   of cuBLAS and OpenBLAS differ); GPU bf16: 5e-2 in the relative L2 norm
 *   (the parameters are held in bf16, the activations computed in it).
 *   Device arrays on the caller's stream give the host-array result bit for
 *   bit: the inputs are copied in on that stream just before the call and
 *   the outputs copied out just after it, with no synchronisation between,
 *   so the forward must run after the first copy and before the second.
 *   A surrogate from a GPU trainer predicts what insitra_predict does, bit
 *   for bit (the same kernels, the same micro-batches). The model has its
 *   feature maps on (data.normalize, model.residual), so every path,
 *   device arrays too, applies them on the GPU.
 *   Device predictions of host pointers, and of a CPU surrogate, are refused.
 *
 * Without a usable GPU (CI has none) the test exits 77 (skipped).
 *
 *   test_gpu_surrogate <scratch dir>
 */
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_util.h"

enum { T = 32, F_IN = 5, F_OUT = 3, N = 13, MB = 4 };
static float x[N][T][F_IN], y_cpu[N][T][F_OUT], y_gpu[N][T][F_OUT], y_dev[N][T][F_OUT], y_ref[N][T][F_OUT];

static insitra_config *options(insitra_test *tc, const char *device, const char *precision)
{
    insitra_config *o = insitra_test_config(tc, "{}");
    insitra_test_set(tc, o, "device", "%s", device);
    insitra_test_set(tc, o, "precision", "%s", precision);
    return o;
}

static insitra_surrogate *surrogate_on(insitra_test *tc, const char *path, const char *device, const char *precision)
{
    insitra_config *o = options(tc, device, precision);
    insitra_surrogate *s = NULL;
    EXPECT_OK(tc, insitra_surrogate_create(&s, path, o, MB, MPI_COMM_WORLD), device);
    insitra_config_free(o);
    return s;
}

int main(int argc, char **argv)
{
    insitra_test tc = insitra_test_begin(&argc, &argv, "gpu_surrogate");
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess) devices = 0;
    if (devices < 1) return insitra_test_skip(&tc, "no usable CUDA device");
    const char *dir = argc > 1 ? argv[1] : ".";
    char path[4200];
    snprintf(path, sizeof path, "%s/gpu-surrogate.h5", dir);
    for (int i = 0; i < N * T * F_IN; i++) (&x[0][0][0])[i] = (float)sin(0.013 * i) + 0.5f * (float)cos(0.7 * i);
    const int64_t ny = (int64_t)N * T * F_OUT;

    /* a trainer on the GPU with its feature maps on (data.normalize,
     * model.residual), trained a little, predicts; its export is the
     * reference model */
    insitra_config *cfg = insitra_test_config(
        &tc, "device: cuda\nmodel: {seq_len: 32, in_features: 5, out_features: 3, d_model: 64, n_layers: 2, "
             "n_heads: 4, residual: true}\ntraining: {batch_size: 8, micro_batch_size: 4}\n"
             "data: {capacity: 16, normalize: running}\n"
             "optimizer: {lr: 0.01, warmup_steps: 0}\n");
    insitra_trainer *tr = NULL;
    if (!EXPECT_OK(&tc, insitra_trainer_create(&tr, cfg, MPI_COMM_WORLD), "trainer_create")) return insitra_test_end(&tc);
    static float ys[N][T][F_OUT];
    for (int i = 0; i < (int)ny; i++) (&ys[0][0][0])[i] = (float)cos(0.05 * i);
    EXPECT_OK(&tc, insitra_push_samples(tr, N, &x[0][0][0], &ys[0][0][0]), "push");
    for (int k = 0; k < 3; k++) EXPECT_OK(&tc, insitra_train_step(tr, NULL), "train_step");
    EXPECT_OK(&tc, insitra_predict(tr, N, &x[0][0][0], &y_ref[0][0][0]), "predict");
    EXPECT_OK(&tc, insitra_export_save(tr, path), "export_save");
    insitra_surrogate *live = NULL;
    insitra_config *o = options(&tc, "cuda", "fp32");
    EXPECT_OK(&tc, insitra_surrogate_create_from_trainer(&live, tr, o, MB), "surrogate from the GPU trainer");
    insitra_config_free(o);
    if (live) {
        EXPECT_OK(&tc, insitra_surrogate_predict(live, N, &x[0][0][0], &y_gpu[0][0][0]), "predict (live)");
        EXPECT(&tc, memcmp(y_gpu, y_ref, sizeof y_ref) == 0, "the live GPU surrogate differs from insitra_predict");
    }
    insitra_surrogate_free(live);
    insitra_trainer_free(tr);
    insitra_config_free(cfg);

    insitra_surrogate *cpu = surrogate_on(&tc, path, "cpu", "fp32");
    insitra_surrogate *gpu = surrogate_on(&tc, path, "cuda", "fp32");
    insitra_surrogate *bf16 = surrogate_on(&tc, path, "cuda", "bf16");
    if (!cpu || !gpu || !bf16) return insitra_test_end(&tc);
    EXPECT_OK(&tc, insitra_surrogate_predict(cpu, N, &x[0][0][0], &y_cpu[0][0][0]), "predict (cpu)");
    EXPECT_OK(&tc, insitra_surrogate_predict(gpu, N, &x[0][0][0], &y_gpu[0][0][0]), "predict (gpu fp32)");
    insitra_test_within(&tc, "GPU fp32 against CPU fp32 (max, scaled)",
                        insitra_test_max_error(&y_gpu[0][0][0], &y_cpu[0][0][0], ny), 1e-4);

    /* device arrays, ordered only by the caller's stream */
    float *dx = NULL, *dy = NULL;
    cudaStream_t stream;
    EXPECT(&tc, cudaMalloc((void **)&dx, sizeof x) == cudaSuccess && cudaMalloc((void **)&dy, sizeof y_dev) == cudaSuccess &&
                    cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) == cudaSuccess, "CUDA set-up");
    cudaMemsetAsync(dy, 0xff, sizeof y_dev, stream); /* NaNs, unless the forward writes them */
    cudaMemcpyAsync(dx, x, sizeof x, cudaMemcpyHostToDevice, stream);
    EXPECT_OK(&tc, insitra_surrogate_predict_device(gpu, N, dx, dy, stream), "predict_device");
    cudaMemcpyAsync(y_dev, dy, sizeof y_dev, cudaMemcpyDeviceToHost, stream);
    EXPECT(&tc, cudaStreamSynchronize(stream) == cudaSuccess, "stream");
    EXPECT(&tc, memcmp(y_dev, y_gpu, sizeof y_dev) == 0, "device arrays differ from host arrays");
    EXPECT(&tc, insitra_surrogate_predict_device(gpu, N, &x[0][0][0], dy, stream) == INSITRA_STATUS_INVALID_ARGUMENT &&
                    strstr(insitra_last_error(), "x is not memory"), "host x accepted: %s", insitra_last_error());
    EXPECT(&tc, insitra_surrogate_predict_device(cpu, N, dx, dy, stream) == INSITRA_STATUS_INVALID_ARGUMENT,
           "device predict on a CPU surrogate accepted");

    EXPECT_OK(&tc, insitra_surrogate_predict(bf16, N, &x[0][0][0], &y_gpu[0][0][0]), "predict (gpu bf16)");
    insitra_test_within(&tc, "GPU bf16 against CPU fp32 (relative L2)",
                        insitra_test_l2_error(&y_gpu[0][0][0], &y_cpu[0][0][0], ny), 5e-2);
    EXPECT_OK(&tc, insitra_surrogate_predict_device(bf16, N, dx, dy, stream), "predict_device (bf16)");
    cudaMemcpyAsync(y_dev, dy, sizeof y_dev, cudaMemcpyDeviceToHost, stream);
    cudaStreamSynchronize(stream);
    EXPECT(&tc, memcmp(y_dev, y_gpu, sizeof y_dev) == 0, "bf16: device arrays differ from host arrays");

    cudaFree(dx);
    cudaFree(dy);
    cudaStreamDestroy(stream);
    insitra_surrogate_free(cpu);
    insitra_surrogate_free(gpu);
    insitra_surrogate_free(bf16);
    return insitra_test_end(&tc);
}
