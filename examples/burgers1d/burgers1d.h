/* burgers1d's decomposition of the periodic 1-D grid over the ranks. */
#ifndef BURGERS1D_H
#define BURGERS1D_H

#include <mpi.h>

/* This rank's cells [first, first + n) of the global grid of `cells`, its
 * neighbours, and the field with one halo cell on each side. */
typedef struct {
    MPI_Comm comm; /* periodic 1-D Cartesian */
    int rank, size, left, right;
    long cells, first, n;
    double dx, dt;
    double *u, *u_next, *f; /* [n + 2], cell i at index i + 1 */
} domain;

#endif
