/*
 * The latency of one surrogate prediction in a simulation's loop
 * (insitra_surrogate_predict, and _predict_device on a GPU): a model of
 * config S or M with random weights is exported (the file the PyTorch side,
 * bench_torch_surrogate.py, loads too), a surrogate is made from the export
 * on the device asked for, and one call predicting n samples is timed reps
 * times after warmup calls. Prints the median and the 10th/90th percentiles
 * and, last, "RESULT config=... key=value ...".
 *
 *   bench_surrogate --config S|M --device cpu|cuda --precision fp32|bf16
 *                   --n N --reps R --warmup W --export PATH
 *
 * Config S: T=256, F=16, C=128, L=4, H=4; M: T=1024, F=64, C=768, L=12,
 * H=12 (bench/README.md, the GPU benchmark's M).
 */
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "insitra.h"
#ifdef INSITRA_BENCH_CUDA
#include <cuda_runtime.h>
#endif

typedef struct {
    const char *name;
    long seq_len, features, d_model, n_layers, n_heads;
} bench_config;

static const bench_config configs[] = {
    {"S", 256, 16, 128, 4, 4},
    {"M", 1024, 64, 768, 12, 12},
};

static int cmp_double(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

#define CHECK(call)                                                                   \
    do {                                                                              \
        insitra_status s_ = (call);                                                   \
        if (s_ != INSITRA_STATUS_OK) {                                                \
            fprintf(stderr, "bench_surrogate: %s: %s\n", #call, insitra_last_error()); \
            MPI_Abort(MPI_COMM_WORLD, 1);                                             \
        }                                                                             \
    } while (0)

static void set(insitra_config *cfg, const char *key, long v)
{
    char text[32];
    snprintf(text, sizeof text, "%ld", v);
    CHECK(insitra_config_set(cfg, key, text));
}

/* A trainer on the CPU of this process alone, only to write the export. */
static void write_export(const bench_config *bc, const char *path)
{
    insitra_config *cfg;
    CHECK(insitra_config_create(&cfg));
    set(cfg, "model.seq_len", bc->seq_len);
    set(cfg, "model.in_features", bc->features);
    set(cfg, "model.out_features", bc->features);
    set(cfg, "model.d_model", bc->d_model);
    set(cfg, "model.n_layers", bc->n_layers);
    set(cfg, "model.n_heads", bc->n_heads);
    set(cfg, "training.batch_size", 1);
    set(cfg, "data.capacity", 1);
    insitra_trainer *t;
    CHECK(insitra_trainer_create(&t, cfg, MPI_COMM_SELF));
    CHECK(insitra_export_save(t, path));
    CHECK(insitra_trainer_free(t));
    CHECK(insitra_config_free(cfg));
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    const char *config = "S", *device = "cpu", *precision = "fp32", *path = "bench_surrogate.h5";
    long n = 16, reps = 50, warmup = 5;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--config")) config = argv[i + 1];
        else if (!strcmp(argv[i], "--device")) device = argv[i + 1];
        else if (!strcmp(argv[i], "--precision")) precision = argv[i + 1];
        else if (!strcmp(argv[i], "--n")) n = atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--reps")) reps = atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--warmup")) warmup = atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--export")) path = argv[i + 1];
        else {
            fprintf(stderr, "bench_surrogate: unknown option %s\n", argv[i]);
            MPI_Abort(MPI_COMM_WORLD, 2);
        }
    }
    const bench_config *bc = NULL;
    for (size_t k = 0; k < sizeof configs / sizeof configs[0]; k++)
        if (!strcmp(configs[k].name, config)) bc = &configs[k];
    if (!bc || n < 1 || reps < 1 || warmup < 0) {
        fprintf(stderr, "bench_surrogate: --config S|M, --n, --reps >= 1, --warmup >= 0\n");
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    const int gpu = !strcmp(device, "cuda");
#ifndef INSITRA_BENCH_CUDA
    if (gpu) {
        fprintf(stderr, "bench_surrogate: built without CUDA (configure with INSITRA_ENABLE_CUDA=ON)\n");
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
#endif
    write_export(bc, path);

    insitra_config *opts;
    CHECK(insitra_config_create(&opts));
    CHECK(insitra_config_set(opts, "device", device));
    CHECK(insitra_config_set(opts, "precision", precision));
    insitra_surrogate *s;
    CHECK(insitra_surrogate_create(&s, path, opts, n, MPI_COMM_SELF));
    const size_t xs = (size_t)(n * bc->seq_len * bc->features);
    float *x = malloc(xs * sizeof *x), *y = malloc(xs * sizeof *y);
    double *ms = malloc((size_t)reps * sizeof *ms), *ms_dev = malloc((size_t)reps * sizeof *ms_dev);
    if (!x || !y || !ms || !ms_dev) MPI_Abort(MPI_COMM_WORLD, 1);
    for (size_t i = 0; i < xs; i++) x[i] = (float)sin(0.001 * (double)i);

    /* host arrays: the copies in and out are part of the call */
    for (long r = 0; r < warmup; r++) CHECK(insitra_surrogate_predict(s, n, x, y));
    for (long r = 0; r < reps; r++) {
        const double t0 = MPI_Wtime();
        CHECK(insitra_surrogate_predict(s, n, x, y));
        ms[r] = 1e3 * (MPI_Wtime() - t0);
    }
    qsort(ms, (size_t)reps, sizeof *ms, cmp_double);
    double dev_median = NAN;
#ifdef INSITRA_BENCH_CUDA
    if (gpu) {
        /* device arrays on the caller's stream, as a GPU simulation calls it */
        float *dx, *dy;
        cudaStream_t stream;
        if (cudaMalloc((void **)&dx, xs * sizeof(float)) != cudaSuccess ||
            cudaMalloc((void **)&dy, xs * sizeof(float)) != cudaSuccess || cudaStreamCreate(&stream) != cudaSuccess)
            MPI_Abort(MPI_COMM_WORLD, 1);
        cudaMemcpy(dx, x, xs * sizeof(float), cudaMemcpyHostToDevice);
        for (long r = 0; r < warmup; r++) CHECK(insitra_surrogate_predict_device(s, n, dx, dy, stream));
        cudaStreamSynchronize(stream);
        for (long r = 0; r < reps; r++) {
            const double t0 = MPI_Wtime();
            CHECK(insitra_surrogate_predict_device(s, n, dx, dy, stream));
            cudaStreamSynchronize(stream);
            ms_dev[r] = 1e3 * (MPI_Wtime() - t0);
        }
        qsort(ms_dev, (size_t)reps, sizeof *ms_dev, cmp_double);
        dev_median = ms_dev[reps / 2];
        cudaFree(dx);
        cudaFree(dy);
        cudaStreamDestroy(stream);
    }
#endif
    const char *threads = getenv("OMP_NUM_THREADS");
    printf("surrogate %s on %s (%s), %ld x %ld tokens: host arrays median %.3f ms (p10 %.3f, p90 %.3f)",
           bc->name, device, precision, n, bc->seq_len, ms[reps / 2], ms[reps / 10], ms[(reps * 9) / 10]);
    if (gpu) printf(", device arrays median %.3f ms", dev_median);
    printf("\nRESULT config=%s device=%s precision=%s n=%ld seq_len=%ld threads=%s host_ms=%.4f device_ms=%.4f\n",
           bc->name, device, precision, n, bc->seq_len, threads ? threads : "default", ms[reps / 2], dev_median);
    insitra_surrogate_free(s);
    insitra_config_free(opts);
    free(x), free(y), free(ms), free(ms_dev);
    MPI_Finalize();
    return 0;
}
