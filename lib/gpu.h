/*
 * The GPU backend (config key device = cuda) as the trainer sees it. The
 * trainer keeps its host-side state (configuration, layout, sample store
 * indices, the sampler, the host copies of parameters and moments that
 * checkpoints read and write); the engine holds the device copies and runs
 * the step. Built from lib/cuda/ with INSITRA_ENABLE_CUDA; otherwise
 * lib/gpu_none.c answers every call with a clear error.
 */
#ifndef INSITRA_GPU_H
#define INSITRA_GPU_H

#include <stdbool.h>
#include <stdint.h>

#include "insitra.h"

struct insitra_trainer;
typedef struct insitra_gpu insitra_gpu;

/* Local: picks the device from the node-local rank, allocates everything
 * and uploads the trainer's initial parameters. */
insitra_status insitra_gpu_create(insitra_gpu **gpu, struct insitra_trainer *t);
/* Collective over the dp group, after every rank's create succeeded: the NCCL communicator. */
insitra_status insitra_gpu_connect(insitra_gpu *gpu, struct insitra_trainer *t);
void insitra_gpu_free(insitra_gpu *gpu);

/* The trainer's host copies <-> the device: parameters (full or this rank's
 * shard, as the ZeRO stage keeps them) and the AdamW moments. */
insitra_status insitra_gpu_upload_state(insitra_gpu *gpu, struct insitra_trainer *t);
insitra_status insitra_gpu_download_state(insitra_gpu *gpu, struct insitra_trainer *t);

/* Copies n samples into the device store from slot first on (wrapping). x
 * and y are host or device pointers. */
insitra_status insitra_gpu_store_samples(insitra_gpu *gpu, int64_t first, int64_t n,
                                         const float *x, const float *y);
/* The device store's slots [first, first + n) (wrapping) into the host
 * arrays store_x, store_y laid out as the host store. */
insitra_status insitra_gpu_fetch_samples(insitra_gpu *gpu, int64_t first, int64_t n, float *store_x,
                                         float *store_y);
/* Index of the first non-finite value of the device array a[0..n), or -1. */
insitra_status insitra_gpu_first_nonfinite(insitra_gpu *gpu, const float *a, int64_t n,
                                           int64_t *index);
/* Whether ptr is device memory the engine can read. */
bool insitra_gpu_is_device_pointer(const void *ptr);

/* One optimizer step over the samples at slots[0..batch_size): forward and
 * backward per micro-batch, reduction over dp, AdamW with the step's
 * learning rate (t counts steps from 1). Returns the global loss and
 * gradient norm; a non-finite one leaves the parameters unchanged. */
insitra_status insitra_gpu_train_step(insitra_gpu *gpu, const int64_t *slots, int64_t t,
                                      double lr, double *loss, double *grad_norm);

/* Collective over dp: forward of n host samples in micro-batches (chunks is
 * the agreed count of forwards, so every rank joins the stage-3 gathers).
 * y_out (host, optional) receives the outputs; with y, *sse the sum of
 * squared errors. */
insitra_status insitra_gpu_forward(insitra_gpu *gpu, int64_t n, int64_t chunks, const float *x,
                                   const float *y, float *y_out, double *sse);

/* Collective over dp, for the benchmark of the collectives: times the
 * communication of one step alone (the stage's per-unit reductions and
 * parameter gathers, packing included, as the step issues them) and the
 * same bytes as single raw NCCL calls on whole buffers (all-reduce at stage
 * 0, reduce-scatter + all-gather otherwise); medians over reps, in seconds. */
insitra_status insitra_gpu_time_collectives(insitra_gpu *gpu, int reps, double *seconds,
                                            double *raw_seconds, int64_t *bytes);

/* Device bytes by category. */
insitra_status insitra_gpu_memory(const insitra_gpu *gpu, insitra_memory_usage *usage);

#endif /* INSITRA_GPU_H */
