/*
 * insitra: in-situ transformer training for MPI simulation codes.
 *
 * The one public C header. Every call returns an insitra_status; on failure
 * insitra_last_error() holds a message with context (key, value, allowed
 * range, rank). The library never exits, aborts or prints unless the
 * configuration asks it to print progress.
 *
 * Collective calls (every rank of the trainer's communicator must make them,
 * in the same order): insitra_trainer_create, insitra_trainer_free,
 * insitra_train_step, insitra_predict, insitra_evaluate, the checkpoint and
 * export calls, insitra_surrogate_create*. A surrogate's predictions are
 * local. A collective call
 * that fails on one rank fails on every rank with the failing rank's message,
 * so no rank is left waiting.
 *
 * Array layout: a sample is T tokens of F features, float32, row-major. A
 * batch of n inputs is a C array x[n][T][F_in]; targets y[n][T][F_out]. From
 * Fortran the same memory is x(F_in, T, n).
 */
#ifndef INSITRA_H
#define INSITRA_H

#include <mpi.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define INSITRA_VERSION_MAJOR 0
#define INSITRA_VERSION_MINOR 1
#define INSITRA_VERSION_PATCH 0

typedef enum insitra_status {
    INSITRA_STATUS_OK = 0,
    INSITRA_STATUS_INVALID_ARGUMENT = 1, /* NULL handle, wrong size, NaN in data */
    INSITRA_STATUS_CONFIG_ERROR = 2,     /* unknown key, value out of range */
    INSITRA_STATUS_PARSE_ERROR = 3,      /* malformed YAML */
    INSITRA_STATUS_IO_ERROR = 4,         /* a file could not be read or written */
    INSITRA_STATUS_OUT_OF_MEMORY = 5,
    INSITRA_STATUS_MPI_ERROR = 6,
    INSITRA_STATUS_NOT_READY = 7,        /* e.g. training with an empty sample store */
    INSITRA_STATUS_NUMERICAL_ERROR = 8,  /* the loss or a gradient became non-finite */
    INSITRA_STATUS_REMOTE_ERROR = 9,     /* another rank failed this collective call */
    INSITRA_STATUS_DEVICE_ERROR = 10     /* no usable GPU, or a CUDA, cuBLAS or NCCL call failed */
} insitra_status;

/* The message of the last failed call on this thread ("" if none). */
const char *insitra_last_error(void);
/* A constant name for a status code, e.g. "INSITRA_STATUS_CONFIG_ERROR". */
const char *insitra_status_name(insitra_status status);
/* The library version as "MAJOR.MINOR.PATCH". */
const char *insitra_version(void);

/* ------------------------------------------------------------------------ */
/* Configuration: defaults, YAML, and overrides by dotted key.              */
/* ------------------------------------------------------------------------ */

typedef struct insitra_config insitra_config;

/* A configuration holding the defaults listed in docs/config.md. */
insitra_status insitra_config_create(insitra_config **cfg);
insitra_status insitra_config_free(insitra_config *cfg);

/* Applies every key of a YAML file (nested mappings, e.g. model: {d_model: 256}).
 * On any error the configuration is left as it was. */
insitra_status insitra_config_load_yaml(insitra_config *cfg, const char *path);
/* The same from YAML text in memory. */
insitra_status insitra_config_load_yaml_string(insitra_config *cfg, const char *yaml);

/* Sets one key from its text form, e.g. ("model.d_model", "256"). The value is
 * checked against the key's type and range; on error nothing changes. */
insitra_status insitra_config_set(insitra_config *cfg, const char *key, const char *value);
/* Writes the text form of a key's value into buf (NUL-terminated). */
insitra_status insitra_config_get(const insitra_config *cfg, const char *key, char *buf,
                                  size_t buf_size);
/* Checks relations between keys (heads divide d_model, ...). trainer_create
 * calls it too; calling it early gives the error before any MPI work. */
insitra_status insitra_config_validate(const insitra_config *cfg);

/* ------------------------------------------------------------------------ */
/* Trainer                                                                  */
/* ------------------------------------------------------------------------ */

typedef struct insitra_trainer insitra_trainer;

typedef struct insitra_metrics {
    int64_t step;             /* optimizer steps taken, counting this one */
    int64_t tokens;           /* tokens in this step's global batch */
    double loss;              /* mean squared error over the global batch, of the targets as the
                                 model learns them (normalised increments with data.normalize
                                 and model.residual) */
    double grad_norm;         /* global L2 norm of the gradient, before clipping */
    double lr;                /* learning rate used by this step */
    double tokens_per_second; /* tokens / step_seconds */
    double step_seconds;      /* wall time of the step on this rank */
    double comm_wait_seconds; /* part of step_seconds spent waiting on communication */
    double validation_loss;   /* mean squared error over every rank's held-out samples
                                 (data.validation_fraction), in the units of loss; NaN when
                                 not computed this step (only at progress lines, log.every_steps) */
    double ring_wait_seconds; /* part of comm_wait_seconds blocked in the context-parallel
                                 attention ring's waits (0 at parallel.cp = 1): its exposed
                                 communication, the neighbours' lateness included */
} insitra_metrics;

/* Collective over comm (which is duplicated; the caller keeps its own). The
 * configuration is copied: later changes to cfg do not affect the trainer. */
insitra_status insitra_trainer_create(insitra_trainer **trainer, const insitra_config *cfg,
                                      MPI_Comm comm);
/* The same for a Fortran communicator handle (MPI_Comm_f2c). */
insitra_status insitra_trainer_create_fcomm(insitra_trainer **trainer, const insitra_config *cfg,
                                            MPI_Fint comm);
/* Collective. Frees everything the trainer holds; NULL is a no-op. */
insitra_status insitra_trainer_free(insitra_trainer *trainer);

/* The sample shape this trainer expects from this rank: T tokens, F_in input
 * and F_out output features. With parallel.cp or parallel.tp > 1, T is this
 * rank's share, model.seq_len / (cp tp) (docs/parallel.md). */
insitra_status insitra_trainer_sample_shape(const insitra_trainer *trainer, int64_t *seq_len,
                                            int64_t *in_features, int64_t *out_features);
/* Number of trainable parameters of the whole model. */
insitra_status insitra_trainer_num_parameters(const insitra_trainer *trainer, int64_t *count);

/* Local (not collective). Copies n samples into this rank's sample store, a
 * ring buffer of data.capacity samples that evicts the oldest. x is
 * [n][T][F_in], y is [n][T][F_out], T as insitra_trainer_sample_shape gives
 * it: with parallel.cp > 1 this rank's tokens [c T, (c+1) T) of each sample
 * (c its place in its cp group), the group's ranks pushing slices of the same
 * samples in the same order (train_step checks the counts). Samples holding NaN or Inf are rejected
 * (the message names the first bad index) and the store keeps its contents. */
insitra_status insitra_push_samples(insitra_trainer *trainer, int64_t n, const float *x,
                                    const float *y);
/* The same for a trainer with device = cuda, from arrays in this rank's GPU
 * memory (a simulation whose fields live on the GPU): checked for finite
 * values and copied on the device. Not collective. */
insitra_status insitra_push_samples_device(insitra_trainer *trainer, int64_t n, const float *x,
                                           const float *y);
/* Samples currently held in this rank's store. */
insitra_status insitra_samples_stored(const insitra_trainer *trainer, int64_t *count);

/* Collective. One optimizer step: each rank draws training.batch_size samples
 * from its own store (seeded sampler), forward and backward in micro-batches,
 * gradients averaged over ranks, clipped, AdamW with warmup + cosine decay.
 * metrics may be NULL. */
insitra_status insitra_train_step(insitra_trainer *trainer, insitra_metrics *metrics);

/* Collective (n may differ between ranks, and be 0). Model outputs for n
 * inputs: x is [n][T][F_in], y_out is [n][T][F_out]; with parallel.cp > 1,
 * this rank's tokens of each sample, and the same n on the ranks of a cp group. */
insitra_status insitra_predict(insitra_trainer *trainer, int64_t n, const float *x, float *y_out);

/* Collective. Mean squared error over all ranks' samples (n may differ
 * between ranks, and be 0 on some; parallel.cp > 1: as for predict, and the
 * mean is over every rank's tokens); every rank receives the global value. */
insitra_status insitra_evaluate(insitra_trainer *trainer, int64_t n, const float *x,
                                const float *y, double *loss);

/* ------------------------------------------------------------------------ */
/* Checkpoints: one parallel-HDF5 file per checkpoint (docs/checkpoint.md).  */
/* ------------------------------------------------------------------------ */

/* Collective. Writes dir/step-NNNNNNNN.h5 (every rank its shard), then
 * points dir/latest at it and deletes checkpoints beyond checkpoint.keep_last.
 * The file appears under its final name only once every rank has written and
 * flushed its part: a crash leaves the previous checkpoint as it was. The
 * ranks of a cp group must hold the same sample count (INVALID_ARGUMENT
 * otherwise, naming parallel.cp). If path_out is not NULL, the new file's path is written there (NUL-terminated,
 * truncated to path_size). */
insitra_status insitra_checkpoint_save(insitra_trainer *trainer, const char *dir, char *path_out,
                                       size_t path_size);

/* Collective. Restores parameters, optimizer state, the step, every rank's
 * sampler and (when the checkpoint has them) the samples. path is a file, or
 * a directory: then its newest checkpoint that verifies (file complete, every
 * CRC32C right) is used, older ones tried in turn. The checkpoint may come
 * from another rank count, ZeRO stage or parallel.cp (each rank reads its
 * token slice of the stored samples). The model keys must match the
 * trainer's; a mismatch names the key. If path_out is not NULL, the path that
 * was loaded is written there. When nothing loads, the trainer is unchanged,
 * unless a checkpoint failed its checks halfway through reading: then it is
 * reset to the state insitra_trainer_create gave it (the message says which). */
insitra_status insitra_checkpoint_load(insitra_trainer *trainer, const char *path, char *path_out,
                                       size_t path_size);

/* The simulation's own state in the same checkpoint (as SCR routes an
 * application's files into its checkpoint): arrays added here are written
 * into /user/<name> of every later checkpoint of this trainer (the automatic
 * ones of insitra_train_step included), under the same commit protocol and
 * CRC32C, and read back by insitra_checkpoint_load. The library keeps the
 * pointer, not a copy: a save reads data as it is then, a load writes into
 * it. Adding a name again replaces its entry. */
typedef enum insitra_type {
    INSITRA_TYPE_FLOAT32 = 0,
    INSITRA_TYPE_FLOAT64 = 1,
    INSITRA_TYPE_INT32 = 2,
    INSITRA_TYPE_INT64 = 3
} insitra_type;
#define INSITRA_ARRAY_MAX_DIMS 4
#define INSITRA_CHECKPOINT_ARRAYS_MAX 32 /* arrays and scalars one trainer can hold */

/* Local. This rank's piece of a global array of ndim (1-4) dimensions,
 * row-major (C order; the Fortran binding reverses the dimensions):
 * global_shape[ndim], the piece's first element offset[ndim] and extent
 * count[ndim] (0 in any dimension: no piece on this rank). The piece lies in
 * the caller's array data of shape mem_shape[ndim] from mem_offset[ndim]
 * (a field with halo cells); both NULL: data is the piece itself. Every rank
 * must add the same names, types and global shapes, and the pieces must
 * tile the array exactly: a save checks both and fails on every rank,
 * naming the array, the element and the ranks. A checkpoint may be loaded on
 * another decomposition: each rank reads its own piece. name: letters,
 * digits, '_', '-', '.', up to 63 characters. */
insitra_status insitra_checkpoint_add_array(insitra_trainer *trainer, const char *name, insitra_type type,
                                            int32_t ndim, const int64_t *global_shape, const int64_t *offset,
                                            const int64_t *count, const int64_t *mem_shape,
                                            const int64_t *mem_offset, void *data);
/* Local. One value (the simulation's step, time, a flag): rank 0's is saved,
 * a load writes it on every rank. */
insitra_status insitra_checkpoint_add_scalar(insitra_trainer *trainer, const char *name, insitra_type type,
                                             void *data);
/* Local. Forgets every added array and scalar. */
insitra_status insitra_checkpoint_clear_arrays(insitra_trainer *trainer);

/* Local. *stop becomes 1 once the ranks have agreed to stop (SIGUSR1 or
 * SIGTERM arrived, or the checkpoint.deadline passed) and the final
 * checkpoint was written by insitra_train_step; the host then leaves its time
 * loop. */
insitra_status insitra_should_stop(const insitra_trainer *trainer, int32_t *stop);

/* ------------------------------------------------------------------------ */
/* Export and the surrogate: the trained model alone, for inference.        */
/* ------------------------------------------------------------------------ */

/* Collective. Writes a small HDF5 file at path (rank 0 writes; as path.tmp,
 * renamed when complete): every parameter in fp32 with its global shape and
 * CRC32C, the configuration, the model's dimensions, the format version and,
 * with data.normalize on, the feature statistics as a checkpoint holds them
 * (/normalize; docs/checkpoint.md, "Export files"), those insitra_predict
 * applies now: samples pushed since the last step count from the next step.
 * tools/insitra_torch.py opens it in PyTorch. */
insitra_status insitra_export_save(insitra_trainer *trainer, const char *path);

/* An inference handle: the model's parameters and the activations of up to
 * max_batch samples per forward, on the CPU or one GPU, and nothing else (no
 * gradients, moments or sample store). Predictions need no other rank. */
typedef struct insitra_surrogate insitra_surrogate;

/* Collective over comm (MPI_COMM_SELF for one process alone). Rank 0 reads
 * path, an export file or a checkpoint file (every CRC32C checked), and
 * broadcasts it. opts may be NULL; its keys device (cpu or cuda: the GPU is
 * picked from the node-local rank, as for a trainer) and precision (fp32, or
 * bf16 on the GPU: the parameters are held in bf16) are used, no others.
 * max_batch > 0 bounds the samples of one forward; a predict call of more
 * runs several. Allocates everything now: predictions allocate nothing. */
insitra_status insitra_surrogate_create(insitra_surrogate **surrogate, const char *path,
                                        const insitra_config *opts, int64_t max_batch, MPI_Comm comm);
/* The same for a Fortran communicator handle (MPI_Comm_f2c). */
insitra_status insitra_surrogate_create_fcomm(insitra_surrogate **surrogate, const char *path,
                                              const insitra_config *opts, int64_t max_batch,
                                              MPI_Fint comm);
/* Collective over the trainer's communicator: a surrogate holding the
 * trainer's current parameters (gathered at ZeRO stage 3), on every rank;
 * it stays as it is when the trainer trains on. */
insitra_status insitra_surrogate_create_from_trainer(insitra_surrogate **surrogate,
                                                     insitra_trainer *trainer,
                                                     const insitra_config *opts, int64_t max_batch);
/* Local. NULL is a no-op. */
insitra_status insitra_surrogate_free(insitra_surrogate *surrogate);
/* The sample shape of the model: T tokens, F_in inputs, F_out outputs. */
insitra_status insitra_surrogate_sample_shape(const insitra_surrogate *surrogate, int64_t *seq_len,
                                              int64_t *in_features, int64_t *out_features);

/* Local (no other rank takes part). y_out (n, T, F_out) = the model of x
 * (n, T, F_in), host arrays, in physical units: the trainer's feature maps
 * (data.normalize, model.residual; docs/model.md) applied around it, as
 * insitra_predict applies them. Returns when y_out is written. */
insitra_status insitra_surrogate_predict(insitra_surrogate *surrogate, int64_t n, const float *x,
                                         float *y_out);
/* The same for arrays in the GPU memory of a device = cuda surrogate (the
 * feature maps applied on the GPU too): the
 * forward runs after the work queued on stream (a cudaStream_t; NULL is the
 * legacy default stream), and work queued on stream afterwards runs after
 * y_out is written. The call itself does not wait for the GPU. */
insitra_status insitra_surrogate_predict_device(insitra_surrogate *surrogate, int64_t n, const float *x,
                                                float *y_out, void *stream);

/* ------------------------------------------------------------------------ */
/* Memory: what a trainer holds, and what a configuration would need.       */
/* ------------------------------------------------------------------------ */

/* Bytes held on one rank. Model state is parameters + gradients + optimizer
 * state; the ZeRO stage (parallel.zero_stage) decides how much of each is
 * sharded across the data-parallel ranks. */
typedef struct insitra_memory_usage {
    int64_t parameter_bytes;     /* parameters held (full, or this rank's shard at stage 3) */
    int64_t gradient_bytes;      /* gradients held (full at stages 0-1, shard at 2-3) */
    int64_t optimizer_bytes;     /* AdamW moments (full at stage 0, shard at 1-3) */
    int64_t activation_bytes;    /* the activation workspace for one micro-batch */
    int64_t communication_bytes; /* gather, staging and per-layer gradient buffers */
    int64_t sample_store_bytes;  /* this rank's sample store */
    int64_t total_bytes;         /* the sum of the above */
} insitra_memory_usage;

/* What this rank holds now: host bytes on the CPU backend, device bytes
 * with device = cuda (the CUDA context and NCCL's and cuBLAS's own
 * allocations, about 1-2 GiB, come on top). */
insitra_status insitra_memory_report(const insitra_trainer *trainer, insitra_memory_usage *usage);

/* The plan for one ZeRO stage: memory per rank and traffic per step. */
typedef struct insitra_plan {
    int32_t world_size;
    int32_t zero_stage;
    insitra_memory_usage memory;  /* per rank, as insitra_memory_report would report it */
    int64_t comm_bytes_per_step;  /* bytes each rank sends per optimizer step (ring algorithms) */
    int32_t collectives_per_step; /* collective calls per optimizer step */
} insitra_plan;

/* Local, allocates nothing: the memory and communication of training cfg on
 * world_size ranks at ZeRO stage zero_stage (0-3), ignoring cfg's own
 * parallel.* keys. The same arithmetic sizes a real trainer's buffers. */
insitra_status insitra_plan_stage(const insitra_config *cfg, int32_t world_size,
                                  int32_t zero_stage, insitra_plan *plan);

/* Local, allocates nothing: the largest model.seq_len, up to the key's upper
 * limit, at which training cfg (its other keys as they are) on world_size
 * ranks at ZeRO stage zero_stage needs at most budget_bytes per rank, by
 * insitra_plan_stage's formula (memory.total_bytes); 0 when not even a
 * sequence of one fits. *at_limit is set when the key's limit, not the
 * budget, bounds the answer (may be NULL). The CUDA context and the
 * libraries' own allocations are not counted (insitra_memory_report). */
insitra_status insitra_plan_max_seq_len(const insitra_config *cfg, int32_t world_size,
                                        int32_t zero_stage, int64_t budget_bytes,
                                        int64_t *seq_len, int32_t *at_limit);

/* A process grid and its plan. */
typedef struct insitra_plan_grid {
    int32_t dp, cp, tp;  /* parallel.dp x parallel.cp x parallel.tp = world_size */
    insitra_plan plan;   /* at plan.zero_stage */
} insitra_plan_grid;

/* Local, allocates nothing: the grid (cp, tp, ZeRO stage; dp the rest) that
 * trains cfg on world_size ranks within budget_bytes per rank, by
 * insitra_plan_stage's formula. Of the grids cfg allows (cp x tp dividing
 * model.seq_len and world_size, tp dividing model.n_heads and 4 d_model,
 * what cfg's device runs), the one that splits a sample least (smallest
 * cp x tp, then tp before cp, since a tp group's collectives are on every
 * layer's path) and, among those, the least traffic per step. *found = 0
 * when none fits (best untouched). cfg's own parallel.* keys are ignored. */
insitra_status insitra_plan_suggest_grid(const insitra_config *cfg, int32_t world_size, int64_t budget_bytes,
                                         insitra_plan_grid *best, int32_t *found);

/* ---- patch tokens of a grid (lib/patch.c, docs/patches.md) ----
 *
 * A rank's block of a regular grid with `variables` values per point,
 * field [n_0]...[n_{d-1}][variables] (row-major, variables fastest; d = 1, 2
 * or 3; shape = {n_0, ..., n_{d-1}}), cut into patches of `patch` points per
 * axis: T = prod n_k / patch tokens, in row-major order of the patch grid,
 * of F = patch^d x variables features, each token the patch's own block of
 * the field, [a_0]...[a_{d-1}][variables]. tokens is [T][F]. Every n_k must
 * be a multiple of patch. Local: no communication. */
insitra_status insitra_field_to_patches(int32_t d, const int64_t *shape, int64_t variables,
                                        int64_t patch, const float *field, float *tokens);
/* The inverse: tokens [T][F] back into field [n_0]...[n_{d-1}][variables]. */
insitra_status insitra_patches_to_field(int32_t d, const int64_t *shape, int64_t variables,
                                        int64_t patch, const float *tokens, float *field);

#ifdef __cplusplus
}
#endif

#endif /* INSITRA_H */
