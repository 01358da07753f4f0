/*
 * OpenMP threads per rank (threads.c). Ranks that share a node share its
 * cores: two ranks of 2 threads each on 2 cores run a step 25-40x slower than
 * with 1 thread each, so at trainer creation the library looks at the node
 * and, only when OMP_NUM_THREADS is unset, picks the thread count itself.
 * A value the user set is never changed; an oversubscribed node gets a
 * warning on rank 0 when progress lines are on (log.every_steps).
 */
#ifndef INSITRA_THREADS_H
#define INSITRA_THREADS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "insitra.h"

/* What one rank sees of its node: the inputs of insitra_threads_choose. */
typedef struct insitra_threads_node {
    int32_t node_cores; /* CPUs the node's ranks may run on: the union of their affinity masks */
    int32_t rank_cores; /* CPUs this rank may run on: its own affinity mask */
    int32_t ranks;      /* ranks of the trainer's communicator on this node */
    bool bound;         /* the ranks' masks are disjoint: the launcher bound each rank */
} insitra_threads_node;

typedef enum insitra_threads_source {
    INSITRA_THREADS_CHOSEN = 0, /* nobody set a count: picked here, to be set */
    INSITRA_THREADS_ENV = 1,    /* OMP_NUM_THREADS: left as it is */
    INSITRA_THREADS_PROGRAM = 2 /* the program called omp_set_num_threads: left as it is */
} insitra_threads_source;

typedef struct insitra_threads_choice {
    int32_t threads;     /* OpenMP threads per rank */
    insitra_threads_source source;
    bool oversubscribed; /* threads x ranks exceed the node's cores, or a bound rank's own */
} insitra_threads_choice;

/* Pure. omp_num_threads is the environment's OMP_NUM_THREADS (NULL when
 * unset), omp_max_threads what the OpenMP runtime will run now. Set (not
 * empty): omp_max_threads stays, and is only judged; so does a count other
 * than the runtime's default (the rank's CPUs), which the program set
 * itself. Otherwise a launcher-bound rank takes its own mask's CPUs, and
 * an unbound one max(1, node_cores / ranks). */
insitra_threads_choice insitra_threads_choose(const insitra_threads_node *node,
                                              const char *omp_num_threads, int32_t omp_max_threads);

/* Pure. The progress line saying what was chosen or found, and why; with an
 * oversubscribed node (on any node: oversubscribed_anywhere), the warning
 * and what to set instead. */
void insitra_threads_describe(const insitra_threads_node *node, const insitra_threads_choice *choice,
                              bool oversubscribed_anywhere, char *buf, size_t size);

/* Collective over comm (trainer creation): finds the node, applies the
 * choice (omp_set_num_threads only when OMP_NUM_THREADS is unset) and, when
 * cfg's log.every_steps is on, prints the line on rank 0, once a process. */
insitra_status insitra_threads_setup(const insitra_config *cfg, MPI_Comm comm, int rank);

#endif /* INSITRA_THREADS_H */
