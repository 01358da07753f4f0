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

typedef struct insitra_comm {
    MPI_Comm comm;
    int rank, size;
} insitra_comm;

/* Collective over parent. */
insitra_status insitra_comm_create(insitra_comm *c, MPI_Comm parent);
void insitra_comm_free(insitra_comm *c);

/* Collective. Every rank passes its local status; all return OK only if all
 * were OK. Otherwise the lowest failing rank's message reaches every rank:
 * that rank returns its own status, the others INSITRA_STATUS_REMOTE_ERROR. */
insitra_status insitra_comm_agree(const insitra_comm *c, insitra_status local);

/* In-place sums over all ranks. */
insitra_status insitra_comm_sum_doubles(const insitra_comm *c, double *v, int n);
insitra_status insitra_comm_sum_floats(const insitra_comm *c, float *v, int64_t n);

#endif /* INSITRA_COMM_H */
