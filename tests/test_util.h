/*
 * What the test programs share, so each says only what it tests: MPI set-up
 * and tear-down, checks that count a failure and go on (one run shows every
 * failure), one summary line agreed over the ranks, and the helpers tests used
 * to copy (a config from YAML, keys set from numbers, sample waves, error
 * measures).
 *
 *   int main(int argc, char **argv)
 *   {
 *       insitra_test t = insitra_test_begin(&argc, &argv, "zero");
 *       EXPECT(&t, loss < 1.0, "loss %g", loss);
 *       return insitra_test_end(&t);   // 0 or 1, the same on every rank
 *   }
 *
 * Every check takes the test's context: nothing here is a global.
 */
#ifndef INSITRA_TEST_UTIL_H
#define INSITRA_TEST_UTIL_H

#include <mpi.h>
#include <stdbool.h>
#include <stdint.h>

#include "insitra.h"

typedef struct insitra_test {
    const char *name;    /* in the summary line */
    int rank, size;      /* in MPI_COMM_WORLD */
    int failures;        /* this rank's failed checks */
    int compared;        /* tolerance checks made by insitra_test_within */
    double worst_ratio;  /* their largest err / tol (INFINITY once one failed) */
    char worst_name[96]; /* and which quantity it was */
} insitra_test;

/* Initialises MPI (unless the program already did) and line-buffers stdout,
 * so that a crash log shows how far the test got. */
insitra_test insitra_test_begin(int *argc, char ***argv, const char *name);

/* Collective. The failures of all ranks, summed. */
int insitra_test_failures_total(const insitra_test *t);

/* Collective. Sums the failures over the ranks, prints one summary line on
 * rank 0, finalizes MPI and returns the exit status: 0 when no rank failed a
 * check, 1 otherwise, on every rank. */
int insitra_test_end(insitra_test *t);

/* Collective. Prints "SKIP: <why>" on rank 0, finalizes MPI and returns 77,
 * which CTest reports as skipped (SKIP_RETURN_CODE 77). */
int insitra_test_skip(insitra_test *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* EXPECT(&t, cond, printf-args): when cond is false, prints
 * "rank R FAIL file:line: message" and counts the failure. Evaluates to cond,
 * so a test can stop what depends on it: if (!EXPECT(...)) return; */
#define EXPECT(t, cond, ...) insitra_test_expect((t), (cond), __FILE__, __LINE__, __VA_ARGS__)

/* EXPECT_OK(&t, call, what): a library call that must return
 * INSITRA_STATUS_OK; a failure names the status and insitra_last_error(). */
#define EXPECT_OK(t, call, what) insitra_test_expect_ok((t), (call), __FILE__, __LINE__, (what))

bool insitra_test_expect(insitra_test *t, bool ok, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
bool insitra_test_expect_ok(insitra_test *t, insitra_status status, const char *file, int line,
                            const char *what);

/* A measured error against its tolerance: prints "  <what>  err  tol  ok|FAIL"
 * (on rank 0, or on any rank where it fails) and counts a failure when
 * !(err <= tol), so a NaN error fails too. The quantity closest to its
 * tolerance is named in the summary line. */
bool insitra_test_within(insitra_test *t, const char *what, double err, double tol);

/* A configuration loaded from yaml; NULL (and a failure counted) if the YAML
 * does not load. */
insitra_config *insitra_test_config(insitra_test *t, const char *yaml);

/* insitra_config_set with the value formatted like printf, so numbers need
 * no buffer at the call; a refused value counts a failure. */
bool insitra_test_set(insitra_test *t, insitra_config *cfg, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* a[i] = amp * wave(freq * i + phase) for i in [0, n), wave being sin or cos:
 * smooth, reproducible samples with no generator state. */
void insitra_test_fill_wave(float *a, int64_t n, double (*wave)(double), double freq, double phase,
                            double amp);

/* |c - r| / max(|r|, 1e-30); INFINITY when c is not finite. */
double insitra_test_rel_error(double c, double r);

/* A tensor's error normalised by its own scale, max_i |c_i - r_i| /
 * max(max_i |r_i|, 1e-30): "1e-4" means wrong by at most 1e-4 of the largest
 * reference entry. Elementwise relative errors would blow up on entries that
 * are zero in exact arithmetic and rounding noise in both codes. INFINITY
 * when any c_i is not finite. */
double insitra_test_max_error(const float *c, const float *r, int64_t n);

/* ||c - r|| / ||r|| (2-norms); INFINITY when any c_i is not finite. */
double insitra_test_l2_error(const float *c, const float *r, int64_t n);

/* Tensor t's part on tp rank r of tp ranks, cut from the whole tensor g
 * (t->global_shape) into out, by the split's definition (docs/parallel.md),
 * element by element: the reference the tp window code is held to. */
struct insitra_tensor_desc;
void insitra_test_tp_cut(const struct insitra_tensor_desc *t, int64_t tp, int64_t r, const float *g, float *out);

#endif
