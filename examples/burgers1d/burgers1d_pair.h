/*
 * The simulation's half of a burgers1d checkpoint pair. insitra's
 * step-N.h5 holds the surrogate (weights, AdamW moments, samplers, sample
 * stores); what the simulation needs to continue, the field u after the
 * solver step at which step-N.h5 was written and every rank's window
 * generator, goes into DIR/burgers1d-NNNNNNNN.field with the same N, written
 * at the same step boundary. A resumed run loads both halves of the newest
 * pair that loads, so it continues exactly where the first one stopped.
 *
 * File: a header of 8 int64 (magic, version, cells, solver step, training
 * step, ranks, the last training loss and learning rate as float64 bits),
 * u as float64 in global cell order, then one uint64 generator per rank.
 */
#ifndef BURGERS1D_PAIR_H
#define BURGERS1D_PAIR_H

#include <stdint.h>

#include "burgers1d.h"
#include "insitra.h"

typedef struct {
    int64_t train_step;  /* the step-N.h5 this field goes with */
    int64_t solver_step; /* u is the field after this solver step */
    double loss, lr;     /* the last training step's, for the progress lines */
} burgers_pair;

/* Collective. Writes the field file for info->train_step from u (d->u_next
 * after the solver step, interior cells) and this rank's generator, as .tmp
 * then renamed, and deletes the field files whose step-N.h5 is gone
 * (checkpoint.keep_last). 0, or -1 on every rank (rank 0 says why). */
int burgers_pair_save(const char *dir, const domain *d, const double *u, uint64_t rng,
                      const burgers_pair *info);

/* Collective. If dir holds a run of this program, loads the newest pair
 * whose two halves load into t, d->u (interior) and *rng, sets *info and
 * returns 1; returns 0 for a new run (no checkpoint in dir) and -1 on every
 * rank when the run cannot continue (rank 0 says why: a finished run, or no
 * field that pairs with a checkpoint that loads). */
int burgers_pair_resume(const char *dir, insitra_trainer *t, domain *d, uint64_t *rng, burgers_pair *info);

/* Collective. Marks the run in dir finished, so that running the same
 * command again does not append to it. */
void burgers_pair_finish(const char *dir, const domain *d);

#endif
