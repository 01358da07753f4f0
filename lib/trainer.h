/*
 * The trainer handle behind the public API. One per communicator: the
 * configuration it was made with, the model, optimizer state, the sample
 * store and the sampler, and the small per-step buffers, all allocated in
 * insitra_trainer_create.
 */
#ifndef INSITRA_TRAINER_H
#define INSITRA_TRAINER_H

#include <signal.h>
#include <stdio.h>

#include "comm.h"
#include "config.h"
#include "engine.h"
#include "rng.h"
#include "sample_store.h"

struct insitra_trainer {
    insitra_config cfg;
    insitra_comm comm;          /* the caller's communicator, duplicated */
    insitra_comm dp;            /* the data-parallel group: ZeRO shards over it */
    insitra_comm tp;            /* the ranks sharing one replica (one rank while tp = 1) */
    insitra_engine engine;      /* model, ZeRO state and the step, on the configured backend */
    insitra_sample_store store; /* host store: pushes land here first (checkpoints read it) */
    insitra_rng sampler;        /* seeded by (training.seed, rank): draws this rank's batches */
    int64_t sample_cursor;      /* samples drawn so far (the sequential sampler's position) */
    int64_t *batch_slots;       /* (batch_size) store slots of this step's samples */
    int64_t step;               /* optimizer steps taken */
    FILE *jsonl;                /* rank 0's metrics file, or NULL */
    double deadline;            /* MPI_Wtime at which to checkpoint and stop; 0 = none */
    bool handlers_installed;    /* this trainer holds the shared SIGUSR1/SIGTERM handlers */
    sig_atomic_t signals_acknowledged; /* preempt.c's signal count when this trainer joined */
    bool stop;                  /* the ranks agreed to stop; the final checkpoint is written */
};

/* Preemption (preempt.c): signal handlers shared by the trainers that ask for
 * them, which only count signals, and the deadline. */
insitra_status insitra_preempt_setup(insitra_trainer *t);
void insitra_preempt_release(insitra_trainer *t);
/* Whether this rank has been asked to stop (a signal, or the deadline passed). */
bool insitra_preempt_requested(const insitra_trainer *t);

/* Progress line and JSON line for one step (rank 0, as configured). */
void insitra_log_step(insitra_trainer *t, const insitra_metrics *m);
/* A line on rank 0 (when progress lines are on) for a checkpoint written by the step. */
void insitra_log_checkpoint(const insitra_trainer *t, const char *path, bool stop_requested);

#endif /* INSITRA_TRAINER_H */
