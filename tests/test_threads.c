/*
 * OpenMP threads per rank (lib/threads.h): the choice on made-up nodes
 * (cores, ranks, binding, OMP_NUM_THREADS set or not, a program's own
 * omp_set_num_threads), the lines it prints, and the setup on this machine
 * with the environment as the test finds it: a count the user set is never
 * changed, an unset one becomes the choice.
 */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_util.h"
#include "threads.h"

static insitra_threads_node node_of(int32_t node_cores, int32_t rank_cores, int32_t ranks, bool bound)
{
    return (insitra_threads_node){node_cores, rank_cores, ranks, bound};
}

static void expect_choice(insitra_test *t, const char *what, insitra_threads_node node, const char *env,
                          int32_t omp_max, int32_t threads, insitra_threads_source source, bool over)
{
    const insitra_threads_choice c = insitra_threads_choose(&node, env, omp_max);
    EXPECT(t, c.threads == threads && c.source == source && c.oversubscribed == over,
           "%s: threads %d source %d oversubscribed %d, expected %d %d %d", what, c.threads,
           (int)c.source, (int)c.oversubscribed, threads, (int)source, (int)over);
}

static void expect_line(insitra_test *t, const char *what, insitra_threads_node node, const char *env,
                        int32_t omp_max, bool anywhere, const char *needle)
{
    const insitra_threads_choice c = insitra_threads_choose(&node, env, omp_max);
    char line[512];
    insitra_threads_describe(&node, &c, anywhere, line, sizeof line);
    EXPECT(t, strstr(line, needle) != NULL, "%s: '%s' lacks '%s'", what, line, needle);
    const bool warns = strstr(line, "warning") != NULL;
    EXPECT(t, warns == (c.oversubscribed || anywhere), "%s: warning %d in '%s'", what, (int)warns, line);
}

int main(int argc, char **argv)
{
    insitra_test t = insitra_test_begin(&argc, &argv, "threads");
    const insitra_threads_source CHOSEN = INSITRA_THREADS_CHOSEN, ENV = INSITRA_THREADS_ENV,
                                 PROGRAM = INSITRA_THREADS_PROGRAM;

    /* Unset, unbound: the node's CPUs shared out, never below 1. The
     * runtime's default is the rank's CPUs (omp_max = rank_cores). */
    expect_choice(&t, "2 cores, 2 ranks", node_of(2, 2, 2, false), NULL, 2, 1, CHOSEN, false);
    expect_choice(&t, "64 cores, 4 ranks", node_of(64, 64, 4, false), NULL, 64, 16, CHOSEN, false);
    expect_choice(&t, "64 cores, 3 ranks", node_of(64, 64, 3, false), NULL, 64, 21, CHOSEN, false);
    expect_choice(&t, "2 cores, 4 ranks", node_of(2, 2, 4, false), NULL, 2, 1, CHOSEN, true);
    expect_choice(&t, "1 rank", node_of(8, 8, 1, false), NULL, 8, 8, CHOSEN, false);
    expect_choice(&t, "empty OMP_NUM_THREADS", node_of(8, 8, 2, false), "", 8, 4, CHOSEN, false);
    /* Bound by the launcher: each rank its own mask. */
    expect_choice(&t, "bound 4 each", node_of(16, 4, 4, true), NULL, 4, 4, CHOSEN, false);
    expect_choice(&t, "bound 1 each", node_of(2, 1, 2, true), NULL, 1, 1, CHOSEN, false);
    /* A job confined to a cpuset shared by its ranks: the cpuset shared out. */
    expect_choice(&t, "shared cpuset", node_of(8, 8, 4, false), NULL, 8, 2, CHOSEN, false);

    /* Set by the user: kept, only judged. */
    expect_choice(&t, "env 2 x 2 ranks on 2", node_of(2, 2, 2, false), "2", 2, 2, ENV, true);
    expect_choice(&t, "env 1 x 2 ranks on 2", node_of(2, 2, 2, false), "1", 1, 1, ENV, false);
    expect_choice(&t, "env 8 x 8 ranks on 64", node_of(64, 64, 8, false), "8", 8, 8, ENV, false);
    expect_choice(&t, "env 2 on a 1-CPU binding", node_of(2, 1, 2, true), "2", 2, 2, ENV, true);
    expect_choice(&t, "env list", node_of(4, 4, 2, false), "2,1", 2, 2, ENV, false);
    /* The program's own omp_set_num_threads before the trainer: kept too. */
    expect_choice(&t, "program 3", node_of(8, 8, 2, false), NULL, 3, 3, PROGRAM, false);
    expect_choice(&t, "program 6 x 2 on 8", node_of(8, 8, 2, false), NULL, 6, 6, PROGRAM, true);
    /* An earlier trainer's choice is the choice again, not the program's. */
    expect_choice(&t, "second trainer", node_of(8, 8, 2, false), NULL, 4, 4, CHOSEN, false);

    /* The lines: what was chosen and why, and the warning with the fix. */
    expect_line(&t, "chosen", node_of(2, 2, 2, false), NULL, 2, false,
                "1 OpenMP thread per rank (OMP_NUM_THREADS unset: 2 CPUs / 2 ranks on this node)");
    expect_line(&t, "bound", node_of(16, 4, 4, true), NULL, 4, false,
                "4 OpenMP threads per rank (OMP_NUM_THREADS unset: the 4 CPUs the launcher bound");
    expect_line(&t, "env", node_of(2, 2, 2, false), "2", 2, false,
                "2 threads x 2 ranks on this node = 4 threads on 2 CPUs: oversubscribed, a step can "
                "run many times slower; set OMP_NUM_THREADS=1");
    expect_line(&t, "env bound", node_of(2, 1, 2, true), "2", 2, false,
                "2 threads per rank on the 1 CPU each rank is bound to");
    expect_line(&t, "program", node_of(8, 8, 2, false), NULL, 3, false,
                "3 OpenMP threads per rank (the program's omp_set_num_threads)");
    expect_line(&t, "another node", node_of(8, 8, 2, false), "4", 4, true, "on another node");

    /* This machine, the environment as found: set, it stays; unset, the
     * runtime runs the choice afterwards. */
    const char *env = getenv("OMP_NUM_THREADS");
    const int before = omp_get_max_threads();
    insitra_config *cfg = insitra_test_config(&t, "log: {every_steps: 1}\n");
    if (cfg) {
        EXPECT_OK(&t, insitra_threads_setup(cfg, MPI_COMM_WORLD, t.rank), "threads_setup");
        const int after = omp_get_max_threads();
        if (env && env[0] != '\0')
            EXPECT(&t, after == before, "OMP_NUM_THREADS=%s: %d threads became %d", env, before, after);
        else
            EXPECT(&t, after >= 1 && after <= before,
                   "OMP_NUM_THREADS unset: %d threads, the runtime's default %d", after, before);
        insitra_config_free(cfg);
    }
    return insitra_test_end(&t);
}
