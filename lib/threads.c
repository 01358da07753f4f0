/* OpenMP threads per rank: the choice (pure) and finding the node (MPI, Linux affinity). */
#define _GNU_SOURCE /* sched_getaffinity, CPU_COUNT */
#include "threads.h"

#include <omp.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "error.h"

/* The count a rank should run when nothing says otherwise. */
static int32_t fair_share(const insitra_threads_node *node)
{
    if (node->bound) return node->rank_cores > 0 ? node->rank_cores : 1;
    const int32_t ranks = node->ranks > 0 ? node->ranks : 1;
    const int32_t share = node->node_cores / ranks;
    return share > 0 ? share : 1;
}

insitra_threads_choice insitra_threads_choose(const insitra_threads_node *node,
                                              const char *omp_num_threads, int32_t omp_max_threads)
{
    insitra_threads_choice c = {0};
    const int32_t share = fair_share(node);
    if (omp_num_threads != NULL && omp_num_threads[0] != '\0')
        c.source = INSITRA_THREADS_ENV;
    else if (omp_max_threads != node->rank_cores && omp_max_threads != share)
        c.source = INSITRA_THREADS_PROGRAM; /* (share: an earlier trainer's own choice) */
    else
        c.source = INSITRA_THREADS_CHOSEN;
    c.threads = c.source == INSITRA_THREADS_CHOSEN ? share : (omp_max_threads > 0 ? omp_max_threads : 1);
    const int64_t on_node = (int64_t)c.threads * (node->ranks > 0 ? node->ranks : 1);
    c.oversubscribed = on_node > node->node_cores || (node->bound && c.threads > node->rank_cores);
    return c;
}

static const char *plural(int64_t n) { return n == 1 ? "" : "s"; }

void insitra_threads_describe(const insitra_threads_node *node, const insitra_threads_choice *choice,
                              bool oversubscribed_anywhere, char *buf, size_t size)
{
    const int32_t t = choice->threads, share = fair_share(node);
    const char *s = plural(t);
    int n;
    if (choice->source == INSITRA_THREADS_CHOSEN && node->bound)
        n = snprintf(buf, size, "insitra: %d OpenMP thread%s per rank (OMP_NUM_THREADS unset: the %d "
                     "CPU%s the launcher bound each rank to)", t, s, node->rank_cores,
                     plural(node->rank_cores));
    else if (choice->source == INSITRA_THREADS_CHOSEN)
        n = snprintf(buf, size, "insitra: %d OpenMP thread%s per rank (OMP_NUM_THREADS unset: %d CPU%s / "
                     "%d rank%s on this node)", t, s, node->node_cores, plural(node->node_cores),
                     node->ranks, plural(node->ranks));
    else
        n = snprintf(buf, size, "insitra: %d OpenMP thread%s per rank (%s)", t, s,
                     choice->source == INSITRA_THREADS_ENV ? "OMP_NUM_THREADS"
                                                           : "the program's omp_set_num_threads");
    if (n < 0 || (size_t)n >= size) return;
    if (choice->oversubscribed && node->bound && t > node->rank_cores)
        snprintf(buf + n, size - (size_t)n,
                 "\ninsitra warning: %d threads per rank on the %d CPU%s each rank is bound to: "
                 "oversubscribed, a step can run many times slower; set OMP_NUM_THREADS=%d",
                 t, node->rank_cores, plural(node->rank_cores), share);
    else if (choice->oversubscribed)
        snprintf(buf + n, size - (size_t)n,
                 "\ninsitra warning: %d threads x %d ranks on this node = %lld threads on %d CPUs: "
                 "oversubscribed, a step can run many times slower; set OMP_NUM_THREADS=%d",
                 t, node->ranks, (long long)t * node->ranks, node->node_cores, share);
    else if (oversubscribed_anywhere)
        snprintf(buf + n, size - (size_t)n,
                 "\ninsitra warning: on another node, threads x ranks exceed its CPUs: oversubscribed, "
                 "a step can run many times slower; set OMP_NUM_THREADS to its CPUs / ranks");
}

/* This rank's CPUs; false where the affinity mask cannot be read. */
static bool rank_cpus(cpu_set_t *set)
{
    CPU_ZERO(set);
    return sched_getaffinity(0, sizeof *set, set) == 0;
}

/* The node as the ranks on it see it (collective over node). */
static insitra_status find_node(MPI_Comm node_comm, insitra_threads_node *node)
{
    cpu_set_t mine, all;
    const bool have_mask = rank_cpus(&mine);
    int ranks = 1, local[2], sums[2];
    if (MPI_Comm_size(node_comm, &ranks) != MPI_SUCCESS ||
        MPI_Allreduce(&mine, &all, (int)sizeof mine, MPI_BYTE, MPI_BOR, node_comm) != MPI_SUCCESS)
        return insitra_error_set(INSITRA_STATUS_MPI_ERROR,
                                 "trainer_create: gathering the node's CPU affinity masks failed");
    local[0] = have_mask ? CPU_COUNT(&mine) : 0;
    local[1] = have_mask ? 0 : 1;
    if (MPI_Allreduce(local, sums, 2, MPI_INT, MPI_SUM, node_comm) != MPI_SUCCESS)
        return insitra_error_set(INSITRA_STATUS_MPI_ERROR,
                                 "trainer_create: counting the node's CPUs failed");
    node->ranks = ranks;
    if (sums[1] > 0) { /* some rank has no mask: the processors online, nobody bound */
        const long online = sysconf(_SC_NPROCESSORS_ONLN);
        node->node_cores = node->rank_cores = online > 0 ? (int32_t)online : 1;
        node->bound = false;
        return INSITRA_STATUS_OK;
    }
    node->node_cores = CPU_COUNT(&all);
    node->rank_cores = local[0];
    /* Disjoint masks add up to their union: each rank has CPUs of its own. */
    node->bound = ranks > 1 && sums[0] == node->node_cores;
    return INSITRA_STATUS_OK;
}

insitra_status insitra_threads_setup(const insitra_config *cfg, MPI_Comm comm, int rank)
{
    static bool logged = false; /* one line a process, however many trainers */
    MPI_Comm node_comm;
    if (MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &node_comm) != MPI_SUCCESS)
        return insitra_error_set(INSITRA_STATUS_MPI_ERROR,
                                 "trainer_create: MPI_Comm_split_type(MPI_COMM_TYPE_SHARED) failed");
    insitra_threads_node node = {0};
    insitra_status s = find_node(node_comm, &node);
    MPI_Comm_free(&node_comm);
    if (s != INSITRA_STATUS_OK) return s;
    const insitra_threads_choice choice =
        insitra_threads_choose(&node, getenv("OMP_NUM_THREADS"), omp_get_max_threads());
    if (choice.source == INSITRA_THREADS_CHOSEN) omp_set_num_threads(choice.threads);
    int over = choice.oversubscribed, anywhere = 0;
    if (MPI_Allreduce(&over, &anywhere, 1, MPI_INT, MPI_MAX, comm) != MPI_SUCCESS)
        return insitra_error_set(INSITRA_STATUS_MPI_ERROR,
                                 "trainer_create: MPI_Allreduce of the thread check failed");
    if (rank == 0 && cfg->log.every_steps > 0 && !logged) {
        char line[512];
        insitra_threads_describe(&node, &choice, anywhere != 0, line, sizeof line);
        printf("%s\n", line);
        fflush(stdout);
        logged = true;
    }
    return INSITRA_STATUS_OK;
}
