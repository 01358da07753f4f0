/* Progress output, only where the configuration asks for it, on rank 0. */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>

#include "log.h"

void insitra_log_step(const insitra_config *cfg, int rank, FILE *jsonl, const insitra_metrics *m)
{
    if (rank != 0) return;
    const int64_t every = cfg->log.every_steps;
    if (every > 0 && m->step % every == 0) {
        char val[40] = "";
        if (!isnan(m->validation_loss)) snprintf(val, sizeof val, " | val loss %.6e", m->validation_loss);
        printf("insitra step %8" PRId64 " | loss %.6e%s | lr %.3e | grad norm %.3e | %10.0f tokens/s"
               " | %8.2f ms\n",
               m->step, m->loss, val, m->lr, m->grad_norm, m->tokens_per_second, m->step_seconds * 1e3);
        fflush(stdout);
    }
    if (jsonl) {
        /* JSON has no NaN: a step without a validation pass has no such member */
        char val[48] = "";
        if (!isnan(m->validation_loss)) snprintf(val, sizeof val, ",\"validation_loss\":%.9g", m->validation_loss);
        fprintf(jsonl,
                "{\"step\":%" PRId64 ",\"loss\":%.9g%s,\"grad_norm\":%.9g,\"lr\":%.9g,"
                "\"tokens\":%" PRId64 ",\"tokens_per_second\":%.6g,\"step_seconds\":%.6g}\n",
                m->step, m->loss, val, m->grad_norm, m->lr, m->tokens, m->tokens_per_second,
                m->step_seconds);
        /* A killed job keeps every line written so far. */
        fflush(jsonl);
    }
}

void insitra_log_checkpoint(const insitra_config *cfg, int rank, int64_t step, const char *path,
                            bool stop_requested)
{
    if (rank != 0 || cfg->log.every_steps <= 0) return;
    printf("insitra step %8" PRId64 " | checkpoint %s%s\n", step, path,
           stop_requested ? " (stop requested)" : "");
    fflush(stdout);
}
