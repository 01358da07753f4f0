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

struct insitra_config {
    struct {
        int64_t seq_len, in_features, out_features;
        int64_t d_model, n_layers, n_heads;
        bool causal;
        double init_std;
    } model;
    struct {
        int64_t batch_size;       /* samples per rank per optimizer step */
        int64_t micro_batch_size; /* samples per forward/backward; 0 = batch_size */
        int64_t seed;
        double grad_clip;         /* max global grad norm; 0 = off */
    } training;
    insitra_adamw_hparams optimizer;
    struct {
        int64_t capacity;         /* samples held per rank */
    } data;
    struct {
        int64_t every_steps;      /* progress line on rank 0; 0 = silent */
        char jsonl[INSITRA_CONFIG_PATH_MAX]; /* metrics file on rank 0; "" = none */
    } log;
};

/* Micro-batch size with the "0 means batch_size" rule applied. */
int64_t insitra_config_micro_batch(const insitra_config *cfg);

/* Calls fn for every key in table order with its current text value (the
 * basis of dumping a config, e.g. into a checkpoint). */
void insitra_config_for_each(const insitra_config *cfg,
                             void (*fn)(const char *key, const char *value, void *ctx), void *ctx);

#endif /* INSITRA_CONFIG_H */
