/* The shared test context and helpers; see test_util.h. */
#include "test_util.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "model.h"

#define TINY 1e-30

insitra_test insitra_test_begin(int *argc, char ***argv, const char *name)
{
    /* Line-buffered even into a pipe (CTest, mpiexec). */
    setvbuf(stdout, NULL, _IOLBF, 0);
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (!initialized) MPI_Init(argc, argv);
    insitra_test t = {.name = name};
    MPI_Comm_rank(MPI_COMM_WORLD, &t.rank);
    MPI_Comm_size(MPI_COMM_WORLD, &t.size);
    return t;
}

int insitra_test_failures_total(const insitra_test *t)
{
    int total = 0;
    MPI_Allreduce(&t->failures, &total, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    return total;
}

int insitra_test_end(insitra_test *t)
{
    const int total = insitra_test_failures_total(t);
    if (t->rank == 0) {
        printf("%s on %d rank%s: %s (%d failure%s)", t->name, t->size, t->size == 1 ? "" : "s",
               total ? "FAILED" : "passed", total, total == 1 ? "" : "s");
        if (t->compared > 0 && total == 0)
            printf("; %d quantities within tolerance, closest: %s at %.2f of it", t->compared, t->worst_name,
                   t->worst_ratio);
        printf("\n");
    }
    MPI_Finalize();
    return total ? 1 : 0;
}

int insitra_test_skip(insitra_test *t, const char *fmt, ...)
{
    if (t->rank == 0) {
        va_list ap;
        va_start(ap, fmt);
        printf("SKIP: ");
        vprintf(fmt, ap);
        printf("\n");
        va_end(ap);
    }
    MPI_Finalize();
    return 77;
}

bool insitra_test_expect(insitra_test *t, bool ok, const char *file, int line, const char *fmt, ...)
{
    if (ok) return true;
    t->failures++;
    va_list ap;
    va_start(ap, fmt);
    printf("rank %d FAIL %s:%d: ", t->rank, file, line);
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    return false;
}

bool insitra_test_expect_ok(insitra_test *t, insitra_status status, const char *file, int line,
                            const char *what)
{
    return insitra_test_expect(t, status == INSITRA_STATUS_OK, file, line, "%s: %s (%s)", what,
                               insitra_status_name(status), insitra_last_error());
}

bool insitra_test_within(insitra_test *t, const char *what, double err, double tol)
{
    const bool ok = err <= tol;
    /* err / tol ranks quantities with different tolerances; once one failed
     * it stays the named one. */
    const double ratio = ok ? err / tol : INFINITY;
    if (t->compared++ == 0 || ratio > t->worst_ratio) {
        t->worst_ratio = ratio;
        snprintf(t->worst_name, sizeof t->worst_name, "%s", what);
    }
    if (t->rank == 0 || !ok) printf("  %-36s err %.3e  tol %.0e  %s\n", what, err, tol, ok ? "ok" : "FAIL");
    if (!ok) t->failures++;
    return ok;
}

insitra_config *insitra_test_config(insitra_test *t, const char *yaml)
{
    insitra_config *cfg = NULL;
    if (!EXPECT_OK(t, insitra_config_create(&cfg), "config_create")) return NULL;
    if (!EXPECT_OK(t, insitra_config_load_yaml_string(cfg, yaml), "config_load_yaml_string")) {
        insitra_config_free(cfg);
        return NULL;
    }
    return cfg;
}

bool insitra_test_set(insitra_test *t, insitra_config *cfg, const char *key, const char *fmt, ...)
{
    char value[256];
    va_list ap;
    va_start(ap, fmt);
    const int n = vsnprintf(value, sizeof value, fmt, ap);
    va_end(ap);
    if (!EXPECT(t, n >= 0 && (size_t)n < sizeof value, "value for %s does not fit %zu bytes", key,
                sizeof value))
        return false;
    return EXPECT(t, insitra_config_set(cfg, key, value) == INSITRA_STATUS_OK, "config_set %s = %s: %s", key,
                  value, insitra_last_error());
}

void insitra_test_fill_wave(float *a, int64_t n, double (*wave)(double), double freq, double phase,
                            double amp)
{
    for (int64_t i = 0; i < n; i++) a[i] = (float)(amp * wave(freq * (double)i + phase));
}

double insitra_test_rel_error(double c, double r)
{
    return isfinite(c) ? fabs(c - r) / fmax(fabs(r), TINY) : INFINITY;
}

double insitra_test_max_error(const float *c, const float *r, int64_t n)
{
    double diff = 0, scale = 0;
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite(c[i])) return INFINITY;
        diff = fmax(diff, fabs((double)c[i] - (double)r[i]));
        scale = fmax(scale, fabs((double)r[i]));
    }
    return diff / fmax(scale, TINY);
}

double insitra_test_l2_error(const float *c, const float *r, int64_t n)
{
    double diff = 0, norm = 0;
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite(c[i])) return INFINITY;
        const double d = (double)c[i] - (double)r[i];
        diff += d * d;
        norm += (double)r[i] * (double)r[i];
    }
    return sqrt(diff / fmax(norm, TINY));
}

void insitra_test_tp_cut(const insitra_tensor_desc *t, int64_t tp, int64_t r, const float *g, float *out)
{
    const int64_t R = t->global_shape[0], K = t->global_shape[1];
    int64_t n = 0;
    for (int64_t row = 0; row < R; row++)
        for (int64_t col = 0; col < K; col++) {
            bool mine = true;
            switch (t->split) {
            case INSITRA_TP_REPLICATED: break;
            case INSITRA_TP_ROWS: mine = row / (R / tp) == r; break;
            case INSITRA_TP_COLS: mine = col / (K / tp) == r; break;
            case INSITRA_TP_HEADS: mine = row % (R / 3) / (R / 3 / tp) == r; break; /* [q | k | v] */
            }
            if (mine) out[n++] = g[row * K + col];
        }
}
