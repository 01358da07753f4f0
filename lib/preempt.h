/*
 * Preemption (preempt.c): the SIGUSR1/SIGTERM handlers shared by every
 * trainer that asks for them (they only count signals), and the job's
 * deadline. The trainer holds one insitra_preempt and asks it after each
 * step whether to checkpoint and stop.
 */
#ifndef INSITRA_PREEMPT_H
#define INSITRA_PREEMPT_H

#include <signal.h>
#include <stdbool.h>

#include "config.h"

typedef struct insitra_preempt {
    double deadline;                   /* MPI_Wtime at which to checkpoint and stop; 0 = none */
    bool handlers_installed;           /* holds the shared handlers */
    sig_atomic_t signals_acknowledged; /* the signal count when this one joined */
} insitra_preempt;

/* From the checkpoint.* keys: the handlers (checkpoint.signals) and the
 * deadline; nothing unless checkpoint.dir is set. */
insitra_status insitra_preempt_setup(insitra_preempt *p, const insitra_config *cfg);
void insitra_preempt_release(insitra_preempt *p);
/* Whether this rank has been asked to stop (a signal, or the deadline passed). */
bool insitra_preempt_requested(const insitra_preempt *p);

#endif /* INSITRA_PREEMPT_H */
