/*
 * Checkpoint/resume, driven by mode (CTest runs the modes as fixtures, each
 * in its own process):
 *   straight DIR STAGE   20 steps; a checkpoint after step 10; the losses of
 *                        steps 11-20 go to DIR/losses.bin
 *   resume DIR STAGE     load DIR, 10 steps: the losses must equal the
 *                        straight run's bit for bit
 *   (straight and resume with "norm" after STAGE: data.normalize running,
 *   residual targets, and samples pushed before every step)
 *   reshard-write DIR S  6 steps, a checkpoint, the full state to DIR/state.bin
 *   reshard-read DIR S   load (another rank count/stage): parameters and AdamW
 *                        moments must equal the saved ones exactly; 3 more steps
 *   faults DIR           a flipped byte, a truncated file and a stale .tmp are
 *                        skipped with a fallback; another model is refused by key
 *   metadata DIR         root attributes or the stored configuration changed:
 *                        the checkpoint is refused, the older one loads
 *   strings DIR          checkpoint.dir and log.jsonl with control and non-UTF-8
 *                        bytes: a save loads back
 *   crash-prepare DIR    a good checkpoint at step 5
 *   crash DIR            train on to step 10 and save (a rank is killed inside
 *                        the save by INSITRA_CKPT_FAULT)
 *   crash-check DIR      `latest` still names step 5, which loads and verifies
 *   signal DIR           SIGUSR1 on every rank (or on rank 0 only) during
 *                        training: one checkpoint, a clean stop, and the resumed
 *                        run continues exactly like an uninterrupted one
 */
#include <fcntl.h>
#include <math.h>
#include <mpi.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ckpt_damage.h"
#include "insitra.h"
#include "test_util.h"
#include "trainer.h"

/* "norm" after the stage: data.normalize running and residual targets, and
 * two more samples pushed before every step, so the statistics change at
 * every step of both runs. */
static bool normalised;

static insitra_trainer *make(insitra_test *T, int stage, const char *dir, int d_model)
{
    insitra_config *cfg = insitra_test_config(T, "model: {seq_len: 8, in_features: 3, out_features: 2,\n"
                                                 "        n_layers: 2, n_heads: 2}\n"
                                                 "training: {batch_size: 4, micro_batch_size: 2, seed: 3}\n"
                                                 "optimizer: {lr: 1.0e-2, warmup_steps: 3, decay_steps: 30}\n"
                                                 "data: {capacity: 40}\n"
                                                 "checkpoint: {include_samples: true, keep_last: 5}\n");
    if (!cfg) MPI_Abort(MPI_COMM_WORLD, 2);
    insitra_test_set(T, cfg, "parallel.zero_stage", "%d", stage);
    insitra_test_set(T, cfg, "model.d_model", "%d", d_model);
    if (dir) insitra_test_set(T, cfg, "checkpoint.dir", "%s", dir);
    if (normalised) {
        insitra_test_set(T, cfg, "data.normalize", "running");
        insitra_test_set(T, cfg, "model.residual", "true");
        insitra_test_set(T, cfg, "model.residual_inputs", "2,0");
    }
    insitra_trainer *t = NULL;
    if (insitra_trainer_create(&t, cfg, MPI_COMM_WORLD) != INSITRA_STATUS_OK) {
        printf("rank %d: create: %s\n", T->rank, insitra_last_error());
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    insitra_config_free(cfg);
    return t;
}

/* 48 samples per rank, pushed into a store of 40: the ring wraps. */
static void push(insitra_test *T, insitra_trainer *t)
{
    static float x[48][8][3], y[48][8][2];
    insitra_test_fill_wave(&x[0][0][0], 48 * 24, sin, 0.21, T->rank, 1);
    insitra_test_fill_wave(&y[0][0][0], 48 * 16, cos, 0.13, -T->rank, 1);
    EXPECT_OK(T, insitra_push_samples(t, 40, &x[0][0][0], &y[0][0][0]), "push 40");
    EXPECT_OK(T, insitra_push_samples(t, 8, &x[40][0][0], &y[40][0][0]), "push 8");
}

/* Before step k (from 0) of a normalised run: two samples that depend on k. */
static void push_more(insitra_test *T, insitra_trainer *t, int k)
{
    if (!normalised) return;
    float x[2][8][3], y[2][8][2];
    insitra_test_fill_wave(&x[0][0][0], 48, sin, 0.29, k + T->rank, 2.0 + k);
    insitra_test_fill_wave(&y[0][0][0], 32, cos, 0.17, k - T->rank, 1.0);
    EXPECT_OK(T, insitra_push_samples(t, 2, &x[0][0][0], &y[0][0][0]), "push 2");
}

static double step(insitra_test *T, insitra_trainer *t)
{
    insitra_metrics m;
    if (insitra_train_step(t, &m) != INSITRA_STATUS_OK) {
        printf("rank %d: train_step: %s\n", T->rank, insitra_last_error());
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    return m.loss;
}

static void save(insitra_test *T, insitra_trainer *t, const char *dir, char *path)
{
    if (insitra_checkpoint_save(t, dir, path, 4096) != INSITRA_STATUS_OK) {
        printf("rank %d: save: %s\n", T->rank, insitra_last_error());
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
}

static void file_io(insitra_test *T, const char *path, void *data, size_t bytes, int write)
{
    FILE *f = fopen(path, write ? "wb" : "rb");
    size_t done = f ? (write ? fwrite(data, 1, bytes, f) : fread(data, 1, bytes, f)) : 0;
    if (f) fclose(f);
    if (done != bytes) {
        printf("rank %d: cannot %s %s\n", T->rank, write ? "write" : "read", path);
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
}

/* The full parameters and moments (3 P floats), on every rank. */
static float *full_state(insitra_trainer *t)
{
    const int64_t P = t->engine.model.layout.total;
    float *s = malloc((size_t)(3 * P) * sizeof(float));
    insitra_zero_gather_state(&t->engine.zero, s, s + P, s + 2 * P);
    return s;
}

static void straight(insitra_test *T, const char *dir, int stage)
{
    insitra_trainer *t = make(T, stage, NULL, 16);
    push(T, t);
    double losses[10];
    char path[4096];
    for (int k = 0; k < 10; k++) {
        push_more(T, t, k);
        step(T, t);
    }
    save(T, t, dir, path);
    for (int k = 0; k < 10; k++) {
        push_more(T, t, 10 + k);
        losses[k] = step(T, t);
    }
    char out[4200];
    snprintf(out, sizeof out, "%s/losses.bin", dir);
    if (T->rank == 0) file_io(T, out, losses, sizeof losses, 1);
    insitra_trainer_free(t);
}

static void resume(insitra_test *T, const char *dir, int stage)
{
    insitra_trainer *t = make(T, stage, NULL, 16); /* no push: the samples come from the checkpoint */
    char path[4096] = "";
    insitra_status s = insitra_checkpoint_load(t, dir, path, sizeof path);
    EXPECT_OK(T, s, "load");
    EXPECT(T, t->step == 10, "step after load is %lld", (long long)t->step);
    double losses[10], want[10];
    for (int k = 0; k < 10; k++) {
        push_more(T, t, 10 + k);
        losses[k] = step(T, t);
    }
    char in[4200];
    snprintf(in, sizeof in, "%s/losses.bin", dir);
    file_io(T, in, want, sizeof want, 0);
    EXPECT(T, memcmp(losses, want, sizeof want) == 0, "resumed losses differ: %.17g vs %.17g (last)",
           losses[9], want[9]);
    if (T->rank == 0)
        printf("resume on %d ranks, stage %d, from %s: steps 11-20 %s (last loss %.9g)\n", T->size, stage,
               path, memcmp(losses, want, sizeof want) == 0 ? "bit-identical" : "DIFFERENT", losses[9]);
    insitra_trainer_free(t);
}

static void reshard_write(insitra_test *T, const char *dir, int stage)
{
    insitra_trainer *t = make(T, stage, NULL, 16);
    push(T, t);
    for (int k = 0; k < 6; k++) step(T, t);
    char path[4096], out[4200];
    save(T, t, dir, path);
    float *s = full_state(t);
    snprintf(out, sizeof out, "%s/state.bin", dir);
    if (T->rank == 0) file_io(T, out, s, (size_t)(3 * t->engine.model.layout.total) * sizeof(float), 1);
    free(s);
    insitra_trainer_free(t);
}

static void reshard_read(insitra_test *T, const char *dir, int stage)
{
    insitra_trainer *t = make(T, stage, NULL, 16);
    EXPECT_OK(T, insitra_checkpoint_load(t, dir, NULL, 0), "load");
    const int64_t P = t->engine.model.layout.total;
    float *got = full_state(t), *want = malloc((size_t)(3 * P) * sizeof(float));
    char in[4200];
    snprintf(in, sizeof in, "%s/state.bin", dir);
    file_io(T, in, want, (size_t)(3 * P) * sizeof(float), 0);
    const char *what[3] = {"parameters", "AdamW m", "AdamW v"};
    for (int k = 0; k < 3; k++)
        EXPECT(T, memcmp(got + k * P, want + k * P, (size_t)P * sizeof(float)) == 0,
               "%s differ after resharding", what[k]);
    int64_t held = 0;
    insitra_samples_stored(t, &held);
    EXPECT(T, held > 0, "no samples after resharding");
    double last = 0;
    for (int k = 0; k < 3; k++) last = step(T, t);
    EXPECT(T, isfinite(last) && t->step == 9, "training after resharding: loss %g step %lld", last,
           (long long)t->step);
    if (T->rank == 0)
        printf("resharded load on %d ranks, stage %d: parameters and moments exact; %lld samples here; "
               "3 more steps, loss %.6g\n",
               T->size, stage, (long long)held, last);
    free(got);
    free(want);
    insitra_trainer_free(t);
}

static void faults(insitra_test *T, const char *dir)
{
    insitra_trainer *t = make(T, 1, NULL, 16);
    push(T, t);
    char p5[4096], p10[4096], p15[4096], loaded[4096];
    for (int k = 0; k < 5; k++) step(T, t);
    save(T, t, dir, p5);
    for (int k = 0; k < 5; k++) step(T, t);
    save(T, t, dir, p10);
    for (int k = 0; k < 5; k++) step(T, t);
    save(T, t, dir, p15);
    MPI_Barrier(MPI_COMM_WORLD);
    if (T->rank == 0) {
        damage_flip_data(p15, "/model/blocks.1.mlp.fc.weight"); /* newest: a flipped bit */
        if (truncate(p10, 4096) != 0) perror("truncate");  /* next: cut short */
        char stale[4200];
        snprintf(stale, sizeof stale, "%s/step-00000099.h5.tmp", dir);
        FILE *f = fopen(stale, "w");
        if (f) fclose(f);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    insitra_trainer *r = make(T, 1, NULL, 16);
    insitra_status s = insitra_checkpoint_load(r, dir, loaded, sizeof loaded);
    EXPECT(T, s == INSITRA_STATUS_OK && strcmp(loaded, p5) == 0, "fallback loaded '%s' (%s)", loaded,
           insitra_last_error());
    EXPECT(T, r->step == 5, "fallback step %lld", (long long)r->step);
    char stale[4200];
    snprintf(stale, sizeof stale, "%s/step-00000099.h5.tmp", dir);
    EXPECT(T, access(stale, F_OK) != 0, "the stale .tmp was not removed");
    /* each bad file named by itself fails with a reason */
    s = insitra_checkpoint_load(r, p15, NULL, 0);
    EXPECT(T,
           s == INSITRA_STATUS_IO_ERROR && strstr(insitra_last_error(), "CRC32C") &&
               strstr(insitra_last_error(), "blocks.1.mlp.fc.weight"),
           "flipped byte: %s", insitra_last_error());
    if (T->rank == 0) printf("flipped byte: %s\n", insitra_last_error());
    s = insitra_checkpoint_load(r, p10, NULL, 0);
    EXPECT(T, s == INSITRA_STATUS_IO_ERROR, "truncated file: %s", insitra_last_error());
    if (T->rank == 0) printf("truncated: %s\n", insitra_last_error());
    EXPECT(T, r->step == 0, "a failed load leaves the trainer at its initial state");
    /* Retention after resuming from an older checkpoint: the new file stays,
     * older ones beyond keep_last go, later-numbered ones are left alone. */
    EXPECT_OK(T, insitra_checkpoint_load(r, dir, NULL, 0), "reload");
    r->cfg.checkpoint.keep_last = 1;
    step(T, r);
    char p6[4096];
    save(T, r, dir, p6);
    EXPECT(T, access(p6, F_OK) == 0, "the checkpoint just written (%s) was deleted", p6);
    EXPECT(T, access(p5, F_OK) != 0, "step 5 should have been retired (keep_last = 1)");
    EXPECT(T, access(p15, F_OK) == 0, "a later-numbered checkpoint was deleted");
    /* another model */
    insitra_trainer *other = make(T, 1, NULL, 24);
    s = insitra_checkpoint_load(other, p6, NULL, 0);
    EXPECT(T,
           s == (T->rank == 0 ? INSITRA_STATUS_CONFIG_ERROR : INSITRA_STATUS_REMOTE_ERROR) &&
               strstr(insitra_last_error(), "model.d_model"),
           "incompatible model: %s", insitra_last_error());
    if (T->rank == 0) printf("incompatible: %s\n", insitra_last_error());
    insitra_trainer_free(other);
    insitra_trainer_free(r);
    insitra_trainer_free(t);
}

/* Every byte that decides what is loaded is checksummed (issue #16): each
 * damage of the newest checkpoint (step 9) makes a directory load fall back
 * to step 5, and a load of the damaged file by name fail naming the check.
 * A format 1 file (no metadata checksum) still loads, but its tables are
 * checked against its world size all the same. */
static void metadata(insitra_test *T, const char *dir)
{
    insitra_trainer *t = make(T, 1, NULL, 16);
    push(T, t);
    char p5[4096], p9[4096], pristine[4200], loaded[4096] = "";
    for (int k = 0; k < 5; k++) step(T, t);
    save(T, t, dir, p5);
    for (int k = 0; k < 4; k++) step(T, t);
    save(T, t, dir, p9);
    insitra_trainer_free(t);
    snprintf(pristine, sizeof pristine, "%s/pristine.bin", dir);
    if (T->rank == 0) EXPECT(T, damage_copy(p9, pristine, 1.0) == 0, "cannot copy %s to %s", p9, pristine);
    static const char *what[] = {"step 9 -> 73", "world_size 2 -> 4", "world_size 2 -> 1",
                                 "config d_model 16 -> 24", "config made malformed",
                                 "format 1 with world_size 2 -> 1", "format 1"};
    for (int k = 0; k < 7; k++) {
        MPI_Barrier(MPI_COMM_WORLD);
        if (T->rank == 0) {
            int bad = damage_copy(pristine, p9, 1.0);
            if (k == 0) bad |= damage_set_int(p9, "step", 73);
            if (k == 1) bad |= damage_set_int(p9, "world_size", 4);
            if (k == 2) bad |= damage_set_int(p9, "world_size", 1);
            if (k == 3) bad |= damage_config(p9, "d_model: 16", "d_model: 24");
            if (k == 4) bad |= damage_config(p9, "seq_len: 8", "seq_len\001 8");
            if (k >= 5) bad |= damage_downgrade(p9);
            if (k == 5) bad |= damage_set_int(p9, "world_size", 1) | damage_set_int(p9, "dp", 1);
            EXPECT(T, bad == 0, "%s: cannot damage %s", what[k], p9);
        }
        MPI_Barrier(MPI_COMM_WORLD);
        insitra_trainer *r = make(T, 1, NULL, 16);
        insitra_status s = insitra_checkpoint_load(r, dir, loaded, sizeof loaded);
        const bool old_ok = k == 6; /* an undamaged format 1 file loads */
        EXPECT(
            T, s == INSITRA_STATUS_OK && strcmp(loaded, old_ok ? p9 : p5) == 0 && r->step == (old_ok ? 9 : 5),
            "%s: loaded '%s' at step %lld (%s)", what[k], loaded, (long long)r->step, insitra_last_error());
        s = insitra_checkpoint_load(r, p9, NULL, 0);
        if (old_ok) {
            EXPECT(T, s == INSITRA_STATUS_OK, "%s: %s", what[k], insitra_last_error());
        } else {
            EXPECT(T,
                   s == INSITRA_STATUS_IO_ERROR &&
                       strstr(insitra_last_error(), k < 5 ? "metadata checksum" : "shape"),
                   "%s, loaded by name: %s", what[k], insitra_last_error());
            EXPECT(T, r->step == 5 && strstr(insitra_last_error(), "the trainer is unchanged"),
                   "%s: a load refused before reading leaves the trainer at step %lld", what[k],
                   (long long)r->step);
        }
        if (T->rank == 0) printf("%s: %s\n", what[k], old_ok ? "loads" : insitra_last_error());
        insitra_trainer_free(r);
    }
}

/* Paths with any bytes a file name may hold (issue #16.4: a checkpoint.dir
 * or log.jsonl with a non-UTF-8 or control byte made every later load fail):
 * saves to such a directory load back. */
static void strings(insitra_test *T, const char *dir)
{
    char odd[4096], jsonl[4200];
    /* No ':' (MPI-IO reads "name:" as a file system prefix). */
    snprintf(odd, sizeof odd, "%s/ck\xff\xfe\x01\t\"\\ #\n{x}'", dir);
    snprintf(jsonl, sizeof jsonl, "%s/log\x02\xc3(.jsonl", dir);
    if (T->rank == 0) mkdir(odd, 0777);
    MPI_Barrier(MPI_COMM_WORLD);
    insitra_trainer *t[2];
    for (int k = 0; k < 2; k++) {
        t[k] = make(T, 1, odd, 16);
        EXPECT_OK(T, insitra_config_set(&t[k]->cfg, "log.jsonl", jsonl), "log.jsonl");
    }
    push(T, t[0]);
    for (int k = 0; k < 3; k++) step(T, t[0]);
    char path[4096] = "";
    EXPECT_OK(T, insitra_checkpoint_save(t[0], NULL, path, sizeof path), "save");
    EXPECT(T, insitra_checkpoint_load(t[1], NULL, path, sizeof path) == INSITRA_STATUS_OK && t[1]->step == 3,
           "load from a directory named with odd bytes: %s", insitra_last_error());
    if (T->rank == 0)
        printf("odd bytes in checkpoint.dir and log.jsonl: saved and loaded back at step %lld\n",
               (long long)t[1]->step);
    insitra_trainer_free(t[1]);
    insitra_trainer_free(t[0]);
}

static void crash(insitra_test *T, const char *dir, const char *mode)
{
    insitra_trainer *t = make(T, 2, NULL, 16);
    char path[4096];
    if (!strcmp(mode, "crash-prepare")) {
        push(T, t);
        for (int k = 0; k < 5; k++) step(T, t);
        save(T, t, dir, path);
    } else if (!strcmp(mode, "crash")) {
        EXPECT_OK(T, insitra_checkpoint_load(t, dir, NULL, 0), "load");
        for (int k = 0; k < 5; k++) step(T, t);
        save(T, t, dir, path); /* INSITRA_CKPT_FAULT kills a rank in here */
        EXPECT(T, false, "the save was expected to be killed");
    } else {
        char latest[4200], line[64] = "";
        snprintf(latest, sizeof latest, "%s/latest", dir);
        FILE *f = fopen(latest, "r");
        if (f && fgets(line, sizeof line, f)) line[strcspn(line, "\n")] = '\0';
        if (f) fclose(f);
        EXPECT(T, !strcmp(line, "step-00000005.h5"), "latest names '%s'", line);
        EXPECT(T, insitra_checkpoint_load(t, dir, path, sizeof path) == INSITRA_STATUS_OK && t->step == 5,
               "after the crash: %s", insitra_last_error());
        if (T->rank == 0) printf("after a crash inside the save: latest = %s, loads %s\n", line, path);
    }
    insitra_trainer_free(t);
}

static void signal_mode(insitra_test *T, const char *dir, int only_rank0)
{
    /* Uninterrupted reference. */
    insitra_trainer *a = make(T, 3, NULL, 16);
    push(T, a);
    double want[20], got[20];
    for (int k = 0; k < 20; k++) want[k] = step(T, a);
    insitra_trainer_free(a);

    insitra_trainer *b = make(T, 3, dir, 16);
    push(T, b);
    int k = 0, stopped = 0;
    for (; k < 20 && !stopped; k++) {
        if (k == 6 && (!only_rank0 || T->rank == 0)) raise(SIGUSR1);
        got[k] = step(T, b);
        int32_t stop = 0;
        insitra_should_stop(b, &stop);
        stopped = stop;
    }
    EXPECT(T, stopped && k == 7, "stopped after %d steps (want 7)", k);
    insitra_trainer_free(b);

    insitra_trainer *c = make(T, 3, dir, 16);
    EXPECT_OK(T, insitra_checkpoint_load(c, dir, NULL, 0), "load");
    for (; k < 20; k++) got[k] = step(T, c);
    EXPECT(T, memcmp(got, want, sizeof want) == 0, "interrupted run differs (last %.17g vs %.17g)", got[19],
           want[19]);
    if (T->rank == 0)
        printf("SIGUSR1 on %s at step 7: checkpoint, stop, resume: 20 losses %s\n",
               only_rank0 ? "rank 0 only" : "every rank", memcmp(got, want, sizeof want) ? "DIFFERENT" : "bit-identical");
    insitra_trainer_free(c);
}

int main(int argc, char **argv)
{
    /* The summary line names the mode: "checkpoint resume on 4 ranks: passed". */
    char name[128];
    snprintf(name, sizeof name, "checkpoint %s", argc > 1 ? argv[1] : "");
    insitra_test test = insitra_test_begin(&argc, &argv, name);
    insitra_test *T = &test;
    if (argc < 3) {
        if (T->rank == 0) printf("usage: test_checkpoint MODE DIR [STAGE]\n");
        MPI_Finalize();
        return 2;
    }
    const char *mode = argv[1], *dir = argv[2];
    const int stage = argc > 3 ? atoi(argv[3]) : 0;
    normalised = argc > 4 && !strcmp(argv[4], "norm");
    if (T->rank == 0) mkdir(dir, 0777);
    MPI_Barrier(MPI_COMM_WORLD);
    if (!strcmp(mode, "straight"))
        straight(T, dir, stage);
    else if (!strcmp(mode, "resume"))
        resume(T, dir, stage);
    else if (!strcmp(mode, "reshard-write"))
        reshard_write(T, dir, stage);
    else if (!strcmp(mode, "reshard-read"))
        reshard_read(T, dir, stage);
    else if (!strcmp(mode, "faults"))
        faults(T, dir);
    else if (!strcmp(mode, "metadata"))
        metadata(T, dir);
    else if (!strcmp(mode, "strings"))
        strings(T, dir);
    else if (!strncmp(mode, "crash", 5))
        crash(T, dir, mode);
    else if (!strcmp(mode, "signal"))
        signal_mode(T, dir, 0);
    else if (!strcmp(mode, "signal-rank0"))
        signal_mode(T, dir, 1);
    else
        EXPECT(T, false, "unknown mode '%s'", mode);
    return insitra_test_end(T);
}
