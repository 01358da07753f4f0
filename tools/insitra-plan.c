/*
 * insitra-plan: memory per rank and communication per step of a
 * configuration at every ZeRO stage, before a job is submitted.
 *
 *   insitra-plan [--ranks N[,N...]] [--set key=value]... [--memory-per-rank GiB] [config.yaml | step-N.h5]
 *   insitra-plan --max-seq-len --memory-per-rank GiB [--ranks ...] [--set ...] [config.yaml | step-N.h5]
 *   insitra-plan --grid --memory-per-rank GiB [--ranks ...] [--set ...] [config.yaml | step-N.h5]
 *   insitra-plan --system
 *
 * A checkpoint in place of the YAML file plans the configuration stored in it.
 */
#define _GNU_SOURCE /* sched_getaffinity: the cores this process may run on */
#include <omp.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <hdf5.h>

#include "ckpt_format.h"
#include "cpu/gemm.h"
#include "insitra.h"

static int usage(FILE *out)
{
    fprintf(out,
            "usage: insitra-plan [--ranks N[,N...]] [--set key=value]... [--memory-per-rank GiB]\n"
            "                    [--max-seq-len | --grid] [config.yaml | checkpoint.h5]\n"
            "       insitra-plan --system\n"
            "Prints, for each ZeRO stage and rank count, the bytes one rank holds (parameters,\n"
            "gradients, optimizer state, activations, communication buffers, sample store) and\n"
            "the bytes it sends per optimizer step. With --memory-per-rank, marks the stages that\n"
            "fit and names the cheapest one (the least traffic). With --max-seq-len (needs\n"
            "--memory-per-rank), prints instead the largest model.seq_len that fits in that memory\n"
            "at each stage and rank count, the other keys as given. A checkpoint file in place of\n"
            "the YAML file plans the configuration stored in it.\n"
            "With --grid (needs --memory-per-rank), suggests per rank count the process grid\n"
            "(parallel.dp x cp x tp) and ZeRO stage that fit: the fewest ranks per sample, then\n"
            "the least traffic (insitra_plan_suggest_grid).\n"
            "With --system, prints what the CPU backend runs on here: the GEMM libraries and\n"
            "their kernels, the CPU's vector units, cores and OpenMP threads.\n");
    return out == stdout ? 0 : 2;
}

static void print_library(const char *role, const insitra_gemm_info *g)
{
    printf("%-28s %s, kernels %s%s\n", role, g->provider, g->kernel[0] ? g->kernel : "unknown",
           g->kernel_from_env ? " (chosen by OPENBLAS_CORETYPE)" : "");
}

/* --system: the facts that decide the CPU backend's speed, and the one
 * warning a trainer would print here. */
static int print_system(void)
{
    insitra_gemm_info gemm, blas;
    insitra_gemm_info_get(&gemm);
    insitra_blas_info_get(&blas);
    char flags[4096], advice[512];
    insitra_cpu_flags(flags, sizeof flags);
    print_library("linear-layer GEMMs:", &gemm);
    if (strcmp(gemm.provider, blas.provider) != 0) print_library("CBLAS (attention):", &blas);
    const char *widths[] = {"avx512f", "avx2", "avx", "sse2"};
    const char *widest = "unknown";
    for (size_t i = 0; i < sizeof widths / sizeof widths[0] && !strcmp(widest, "unknown"); i++) {
        char word[16];
        snprintf(word, sizeof word, " %s ", widths[i]);
        char padded[4100];
        snprintf(padded, sizeof padded, " %s ", flags);
        if (strstr(padded, word)) widest = widths[i];
    }
    printf("%-28s widest vector flag %s\n", "CPU:", widest);
    cpu_set_t set;
    const int usable = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : -1;
    const char *omp_env = getenv("OMP_NUM_THREADS");
    printf("%-28s %ld online, %d this process may use\n", "cores:", sysconf(_SC_NPROCESSORS_ONLN),
           usable);
    printf("%-28s %d (OMP_NUM_THREADS=%s)\n", "OpenMP threads:", omp_get_max_threads(),
           omp_env && *omp_env ? omp_env : "unset");
    const bool warn =
        insitra_gemm_kernel_advice(gemm.provider, gemm.kernel, flags, advice, sizeof advice) ||
        (strcmp(gemm.provider, blas.provider) != 0 &&
         insitra_gemm_kernel_advice(blas.provider, blas.kernel, flags, advice, sizeof advice));
    printf("%-28s %s\n", "verdict:", warn ? advice : "the kernels use the CPU's widest vector units");
    return 0;
}

static double mib(int64_t bytes) { return (double)bytes / 1048576.0; }

/* Applies "key=value". */
static int apply_set(insitra_config *cfg, const char *arg)
{
    char kv[1024];
    snprintf(kv, sizeof kv, "%s", arg);
    char *eq = strchr(kv, '=');
    if (!eq) {
        fprintf(stderr, "insitra-plan: --set wants key=value, got '%s'\n", kv);
        return 0;
    }
    *eq = '\0';
    if (insitra_config_set(cfg, kv, eq + 1) != INSITRA_STATUS_OK) {
        fprintf(stderr, "insitra-plan: %s\n", insitra_last_error());
        return 0;
    }
    return 1;
}

/* Splits "1,2,4" into rank counts; returns how many, or 0 after a message. */
static int parse_ranks(const char *arg, int *out, int max)
{
    char list[256];
    int n = 0;
    snprintf(list, sizeof list, "%s", arg);
    for (char *tok = strtok(list, ","); tok; tok = strtok(NULL, ",")) {
        const int r = atoi(tok);
        if (r < 1 || n == max) {
            fprintf(stderr, "insitra-plan: bad rank count '%s' (at most %d counts)\n", tok, max);
            return 0;
        }
        out[n++] = r;
    }
    return n;
}

/* --grid: the suggested grid per rank count within the budget. */
static int print_grids(insitra_config *cfg, const char *ranks_arg, double budget_gib)
{
    int ranks[64];
    const int n = parse_ranks(ranks_arg, ranks, 64);
    if (n == 0) return 2;
    const int64_t budget = (int64_t)(budget_gib * 1073741824.0);
    printf("\n\n%5s %5s %5s %5s %5s %11s %12s\n", "ranks", "dp", "cp", "tp", "stage", "total MiB", "sent MiB/step");
    for (int i = 0; i < n; i++) {
        insitra_plan_grid g;
        int32_t found = 0;
        if (insitra_plan_suggest_grid(cfg, ranks[i], budget, &g, &found) != INSITRA_STATUS_OK) {
            fprintf(stderr, "insitra-plan: %s\n", insitra_last_error());
            return 2;
        }
        if (found)
            printf("%5d %5d %5d %5d %5d %11.1f %12.1f\n", ranks[i], g.dp, g.cp, g.tp, g.plan.zero_stage,
                   mib(g.plan.memory.total_bytes), mib(g.plan.comm_bytes_per_step));
        else
            printf("%5d  no grid fits in %.3g GiB per rank\n", ranks[i], budget_gib);
    }
    printf("\nThe fewest ranks per sample (cp x tp; tp first), then the least traffic per step.\n");
    return 0;
}

/* --max-seq-len: the largest model.seq_len within the budget, per rank count
 * and stage, and the plan's total there (cfg's model.seq_len is set to each
 * answer in turn). */
static int print_max_seq_len(insitra_config *cfg, const char *ranks_arg, double budget_gib)
{
    int ranks[64];
    const int nr = parse_ranks(ranks_arg, ranks, 64);
    if (!nr) return 2;
    const int64_t budget = (int64_t)(budget_gib * 1073741824.0);
    printf("\nlargest model.seq_len in %.2f GiB per rank:\n%5s %5s %12s %11s\n", budget_gib, "ranks",
           "stage", "max_seq_len", "total MiB");
    for (int i = 0; i < nr; i++)
        for (int stage = 0; stage < 4; stage++) {
            int64_t T = 0;
            int32_t at_limit = 0;
            insitra_plan p = {0};
            char v[32];
            insitra_status s = insitra_plan_max_seq_len(cfg, ranks[i], stage, budget, &T, &at_limit);
            if (s == INSITRA_STATUS_OK && T > 0) {
                snprintf(v, sizeof v, "%lld", (long long)T);
                s = insitra_config_set(cfg, "model.seq_len", v);
                if (s == INSITRA_STATUS_OK) s = insitra_plan_stage(cfg, ranks[i], stage, &p);
            }
            if (s != INSITRA_STATUS_OK) {
                fprintf(stderr, "insitra-plan: %s\n", insitra_last_error());
                return 2;
            }
            printf("%5d %5d %12lld %11.1f%s\n", ranks[i], stage, (long long)T, mib(p.memory.total_bytes),
                   at_limit ? "  (model.seq_len's upper limit)" : T == 0 ? "  (nothing fits)" : "");
        }
    printf("\nThe CUDA context and the libraries' own allocations (about 1-2 GiB) come on top.\n");
    return 0;
}

/* Loads path into cfg: a checkpoint's stored configuration when path is an
 * HDF5 file, YAML otherwise. Prints why not and returns 0 on failure. */
static int load_config(insitra_config *cfg, const char *path)
{
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL); /* a failure is one line here, not HDF5's stack */
    if (H5Fis_hdf5(path) <= 0) {
        if (insitra_config_load_yaml(cfg, path) == INSITRA_STATUS_OK) return 1;
        fprintf(stderr, "insitra-plan: %s\n", insitra_last_error());
        return 0;
    }
    const hid_t file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (file < 0) {
        fprintf(stderr, "insitra-plan: %s: HDF5 cannot open it: truncated or corrupt\n", path);
        return 0;
    }
    insitra_ckpt_meta meta;
    insitra_ckpt_meta_read(file, &meta);
    H5Fclose(file);
    int ok = meta.config != NULL;
    if (!ok)
        fprintf(stderr, "insitra-plan: %s: no stored configuration (not an insitra checkpoint)\n", path);
    else if (insitra_config_load_yaml_string(cfg, meta.config) != INSITRA_STATUS_OK) {
        fprintf(stderr, "insitra-plan: %s: the stored configuration: %s\n", path, insitra_last_error());
        ok = 0;
    } else
        printf("configuration of %s (step %lld)\n", path, (long long)meta.step);
    insitra_ckpt_meta_free(&meta);
    return ok;
}

int main(int argc, char **argv)
{
    const char *ranks_arg = "1,2,4,8", *yaml = NULL;
    double budget_gib = 0;
    int max_seq_len = 0, grid = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) return usage(stdout);
        if (!strcmp(a, "--system")) return print_system();
        if (!strcmp(a, "--ranks") && i + 1 < argc)
            ranks_arg = argv[++i];
        else if (!strcmp(a, "--memory-per-rank") && i + 1 < argc)
            budget_gib = atof(argv[++i]);
        else if (!strcmp(a, "--max-seq-len"))
            max_seq_len = 1;
        else if (!strcmp(a, "--grid"))
            grid = 1;
        else if (!strcmp(a, "--set") && i + 1 < argc)
            i++; /* applied after the file */
        else if (a[0] != '-' && !yaml)
            yaml = a;
        else {
            fprintf(stderr, "insitra-plan: unexpected argument '%s'\n", a);
            return usage(stderr);
        }
    }
    if ((max_seq_len || grid) && !(budget_gib > 0)) {
        fprintf(stderr, "insitra-plan: %s needs --memory-per-rank GiB (more than 0)\n",
                grid ? "--grid" : "--max-seq-len");
        return usage(stderr);
    }
    /* Defaults, then the file, then every --set on top. */
    insitra_config *cfg = NULL;
    if (insitra_config_create(&cfg) != INSITRA_STATUS_OK) return 1;
    if (yaml && !load_config(cfg, yaml)) return 2;
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--set") && i + 1 < argc && !apply_set(cfg, argv[++i])) return 2;
    if (insitra_config_validate(cfg) != INSITRA_STATUS_OK) {
        fprintf(stderr, "insitra-plan: %s\n", insitra_last_error());
        return 2;
    }

    char val[64];
    printf("model:");
    const char *keys[] = {"model.d_model", "model.n_layers", "model.n_heads", "model.seq_len",
                          "training.batch_size", "training.micro_batch_size"};
    for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++) {
        insitra_config_get(cfg, keys[k], val, sizeof val);
        printf(" %s=%s", strchr(keys[k], '.') + 1, val);
    }
    if (max_seq_len || grid) {
        const int rc = grid ? print_grids(cfg, ranks_arg, budget_gib) : print_max_seq_len(cfg, ranks_arg, budget_gib);
        insitra_config_free(cfg);
        return rc;
    }
    printf("\n\n%5s %5s %10s %10s %10s %10s %10s %10s %11s %12s %6s%s\n", "ranks", "stage",
           "param MiB", "grad MiB", "optim MiB", "activ MiB", "comm MiB", "store MiB", "total MiB",
           "sent MiB/step", "calls", budget_gib > 0 ? "  fits" : "");

    char list[256];
    snprintf(list, sizeof list, "%s", ranks_arg);
    for (char *tok = strtok(list, ","); tok; tok = strtok(NULL, ",")) {
        const int n = atoi(tok);
        if (n < 1) {
            fprintf(stderr, "insitra-plan: bad rank count '%s'\n", tok);
            return 2;
        }
        int best = -1;
        int64_t best_traffic = 0;
        for (int stage = 0; stage < 4; stage++) {
            insitra_plan p;
            if (insitra_plan_stage(cfg, n, stage, &p) != INSITRA_STATUS_OK) {
                fprintf(stderr, "insitra-plan: %s\n", insitra_last_error());
                return 2;
            }
            const insitra_memory_usage *m = &p.memory;
            const int fits = budget_gib > 0 && mib(m->total_bytes) <= budget_gib * 1024.0;
            if (fits && (best < 0 || p.comm_bytes_per_step < best_traffic)) {
                best = stage;
                best_traffic = p.comm_bytes_per_step;
            }
            printf("%5d %5d %10.1f %10.1f %10.1f %10.1f %10.1f %10.1f %11.1f %12.1f %6d%s\n", n,
                   stage, mib(m->parameter_bytes), mib(m->gradient_bytes), mib(m->optimizer_bytes),
                   mib(m->activation_bytes), mib(m->communication_bytes),
                   mib(m->sample_store_bytes), mib(m->total_bytes), mib(p.comm_bytes_per_step),
                   p.collectives_per_step, budget_gib > 0 ? (fits ? "  yes" : "  no") : "");
        }
        if (budget_gib > 0) {
            if (best >= 0)
                printf("      -> on %d ranks with %.1f GiB each: parallel.zero_stage: %d\n", n,
                       budget_gib, best);
            else
                printf("      -> on %d ranks no stage fits in %.1f GiB\n", n, budget_gib);
        }
    }
    printf("\nBytes sent per rank follow ring algorithms; stage 2 and 3 reduce every micro-batch.\n");
    insitra_config_free(cfg);
    return 0;
}
