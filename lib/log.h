/*
 * Progress output (log.c), only where the configuration asks for it
 * (log.every_steps, log.jsonl), and only on the rank that passes rank 0.
 */
#ifndef INSITRA_LOG_H
#define INSITRA_LOG_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "config.h"

/* Progress line every log.every_steps steps, and a JSON line into jsonl (or NULL). */
void insitra_log_step(const insitra_config *cfg, int rank, FILE *jsonl, const insitra_metrics *m);
/* A line (when progress lines are on) for a checkpoint written at step. */
void insitra_log_checkpoint(const insitra_config *cfg, int rank, int64_t step, const char *path,
                            bool stop_requested);

#endif /* INSITRA_LOG_H */
