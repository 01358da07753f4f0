/*
 * The configuration: a plain struct, and a table that maps every dotted key
 * to its field, type, range and default. Defaults, YAML and insitra_config_set
 * all go through the same table, so a key is declared exactly once.
 */
#ifndef INSITRA_CONFIG_H
#define INSITRA_CONFIG_H

#include <stdbool.h>
#include <stdint.h>

#include "insitra.h"
#include "optimizer.h"

#define INSITRA_CONFIG_PATH_MAX 1024
/* model.seq_len's upper limit (the key table's; insitra_plan_max_seq_len searches up to it). */
#define INSITRA_SEQ_LEN_MAX 65536

/* data.sampler: how a rank draws its batch from its own store. */
enum { INSITRA_SAMPLER_RANDOM = 0, INSITRA_SAMPLER_SEQUENTIAL = 1 };

/* device and precision: where and in what type the model computes. */
enum { INSITRA_DEVICE_CPU = 0, INSITRA_DEVICE_CUDA = 1 };
enum { INSITRA_PRECISION_FP32 = 0, INSITRA_PRECISION_BF16 = 1 };
/* training.recompute: keep every block's activations, or only each block's
 * input and recompute the block in backward. */
enum { INSITRA_RECOMPUTE_NONE = 0, INSITRA_RECOMPUTE_BLOCK = 1 };

struct insitra_config {
    int device;                   /* INSITRA_DEVICE_* */
    int precision;                /* INSITRA_PRECISION_*: bf16 compute, fp32 master weights */
    struct {
        int64_t seq_len, in_features, out_features;
        int64_t d_model, n_layers, n_heads;
        bool causal;
        double init_std;
        bool residual;            /* learn the increment y - x[residual_inputs] (lib/normalize.h) */
        char residual_inputs[INSITRA_CONFIG_PATH_MAX]; /* "i0,i1,..": the input feature of each output; "" = o -> o */
    } model;
    struct {
        int64_t batch_size;       /* samples per rank per optimizer step */
        int64_t micro_batch_size; /* samples per forward/backward; 0 = batch_size */
        int64_t seed;
        double grad_clip;         /* max global grad norm; 0 = off */
        int recompute;            /* INSITRA_RECOMPUTE_* */
    } training;
    insitra_adamw_hparams optimizer;
    struct {
        int64_t capacity;         /* samples held per rank */
        int sampler;              /* INSITRA_SAMPLER_* */
        int normalize;            /* INSITRA_NORMALIZE_* (lib/normalize.h) */
        int64_t normalize_samples; /* frozen: freeze once this many samples are counted; 0 = not by samples */
        int64_t normalize_steps;  /* frozen: freeze at this training step; 0 = not by steps */
        double validation_fraction; /* share of pushed samples held out, never trained on */
    } data;
    struct {
        char dir[INSITRA_CONFIG_PATH_MAX]; /* automatic saves go here; "" = none */
        int64_t every_steps;      /* save every N steps; 0 = only on request or signal */
        int64_t keep_last;        /* checkpoints kept in dir */
        bool include_samples;     /* store every rank's samples too */
        bool signals;             /* SIGUSR1/SIGTERM ask for a final checkpoint */
        double deadline_seconds;  /* after trainer creation; 0 = none */
        char deadline_env[128];   /* env var holding the job's end (Unix seconds); "" = none */
        double deadline_margin_seconds; /* stop this long before the deadline */
    } checkpoint;
    struct {
        int64_t dp;               /* data-parallel ranks; 0 = world size / tp */
        int64_t tp;               /* tensor-parallel ranks (docs/parallel.md) */
        int64_t cp;               /* ranks sharing one sample's tokens (docs/parallel.md) */
        int64_t zero_stage;       /* 0-3 */
        double bucket_mib;        /* all ranks' gradient slots one reduction carries (MiB of fp32) */
    } parallel;
    struct {
        bool graphs;              /* capture the training step as a CUDA graph */
    } cuda;
    struct {
        int64_t every_steps;      /* progress line on rank 0; 0 = silent */
        char jsonl[INSITRA_CONFIG_PATH_MAX]; /* metrics file on rank 0; "" = none */
    } log;
};

/* For the YAML front end: a null value (string keys become "", any other key
 * is an error), and whether name is a section that may hold a mapping. */
insitra_status insitra_config_set_null(insitra_config *cfg, const char *key);
insitra_status insitra_config_check_section(const char *name);

/* Part of insitra_config_validate (config_sizes.c): the byte counts of the
 * sample store and the activations fit 64 bits, else a CONFIG_ERROR naming
 * the keys. */
insitra_status insitra_config_check_sizes(const insitra_config *cfg);

/* parallel.bucket_mib in floats (lib/shard.h's buckets). */
int64_t insitra_config_bucket_floats(const insitra_config *cfg);

/* The model's dimensions from the model.* keys. */
struct insitra_model_dims;
struct insitra_model_dims insitra_config_model_dims(const insitra_config *cfg);

/* Micro-batch size with the "0 means batch_size" rule applied. */
int64_t insitra_config_micro_batch(const insitra_config *cfg);

/* How many token slices each sample is split into across the ranks that
 * share it: parallel.cp x parallel.tp consecutive ranks. Rank r holds slice
 * r % slices of its samples, tokens [slice T / slices, (slice + 1) T /
 * slices), and the ranks r / slices share them. The one definition the
 * trainer's store, the model's positions and the checkpoint's re-slicing
 * follow. */
int64_t insitra_config_token_slices(const insitra_config *cfg);

/* Samples each rank's held-out store keeps: data.capacity x data.validation_fraction, rounded up. */
int64_t insitra_config_held_out_capacity(const insitra_config *cfg);

/* A 64-bit hash of every key's value: ranks compare it at trainer_create. */
uint64_t insitra_config_hash(const insitra_config *cfg);
/* The first key whose value differs between a and b (NULL if none), with
 * both values written to va and vb. */
const char *insitra_config_first_difference(const insitra_config *a, const insitra_config *b,
                                            char *va, char *vb, size_t len);

/* The configuration as YAML text (nested sections) into buf; returns the
 * length it needs (snprintf-style), so a caller can size buf first. */
size_t insitra_config_dump_yaml(const insitra_config *cfg, char *buf, size_t len);

/* Calls fn for every key in table order with its current text value (the
 * basis of dumping a config, e.g. into a checkpoint). */
void insitra_config_for_each(const insitra_config *cfg,
                             void (*fn)(const char *key, const char *value, void *ctx), void *ctx);

#endif /* INSITRA_CONFIG_H */
