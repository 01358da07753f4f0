/*
 * The trainer's communicator: a duplicate of the caller's, with errors
 * returned rather than fatal, and the agreement step that keeps a local
 * failure from hanging the other ranks.
 */
#ifndef INSITRA_COMM_H
#define INSITRA_COMM_H

#include <mpi.h>
#include <stdint.h>

#include "insitra.h"

#define INSITRA_COMM_SUM_MAX 4 /* values insitra_comm_sum_ordered takes at once */

typedef struct insitra_comm {
    MPI_Comm comm;
    int rank, size;
    double *gathered;  /* (size, INSITRA_COMM_SUM_MAX) scratch for ordered sums */
} insitra_comm;

/* Collective over parent. */
insitra_status insitra_comm_create(insitra_comm *c, MPI_Comm parent);
void insitra_comm_free(insitra_comm *c);

/* Collective. Every rank passes its local status; all return OK only if all
 * were OK. Otherwise the lowest failing rank's message reaches every rank:
 * that rank returns its own status, the others INSITRA_STATUS_REMOTE_ERROR. */
insitra_status insitra_comm_agree(const insitra_comm *c, insitra_status local);

/* Collective over parent: the ranks with the same color, ordered by key. */
insitra_status insitra_comm_split(const insitra_comm *parent, int color, int key, insitra_comm *c);

/* In-place sum of n <= INSITRA_COMM_SUM_MAX values over all ranks, added in
 * rank order on every rank: bit-identical everywhere, whatever algorithm the
 * MPI library picks (scalars like the loss and the gradient norm decide
 * control flow, so every rank must see the same bits). */
insitra_status insitra_comm_sum_ordered(const insitra_comm *c, double *v, int n);
/* The largest of one value over all ranks. */
insitra_status insitra_comm_max_int64(const insitra_comm *c, int64_t *v);

#endif /* INSITRA_COMM_H */
