/*
 * libFuzzer harness: bytes as a checkpoint file, read the two ways insitra
 * reads checkpoints, on one MPI rank (MPI initialised once):
 *
 * - `insitra-ckpt verify FILE`: the tool's own main (tools/insitra-ckpt.c,
 *   compiled in as insitra_ckpt_main), so the harness runs exactly the
 *   CLI's code;
 * - insitra_checkpoint_load into a trainer of the seeds' model
 *   (ckpt_seed.h), then one training step on whatever was restored.
 *
 * Neither may crash, leak or read out of bounds, whatever the bytes. And
 * they must agree one way: a file the library loads is one `verify` calls
 * valid (the CLI is what an operator trusts before a restart). A broken
 * promise aborts, which libFuzzer reports with the input saved.
 */
#include <hdf5.h>
#include <mpi.h>
#include <sanitizer/common_interface_defs.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ckpt_seed.h"
#include "insitra.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int insitra_ckpt_main(int argc, char **argv); /* tools/insitra-ckpt.c */

static char dir[4096], path[4096 + 32];
static insitra_trainer *trainer;

static void broken(const char *promise, const char *detail)
{
    /* The sanitizers' report channel: libFuzzer's -close_fd_mask closes
     * stderr (the harness's noise) but keeps that one. */
    char line[8192];
    snprintf(line, sizeof line, "fuzz_ckpt: broken promise: %s: %s", promise, detail ? detail : "");
    __sanitizer_report_error_summary(line);
    abort();
}

static void finish(void)
{
    if (trainer) insitra_trainer_free(trainer);
    unlink(path);
    rmdir(dir);
    MPI_Finalize();
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    MPI_Init(NULL, NULL);
    const char *tmp = getenv("TMPDIR");
    snprintf(dir, sizeof dir, "%s/insitra-fuzz-ckpt-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(dir)) broken("a scratch directory", dir);
    /* A checkpoint's name: the reader may take the step from it. */
    snprintf(path, sizeof path, "%s/step-00000002.h5", dir);
    insitra_config *cfg = NULL;
    if (insitra_config_create(&cfg) != INSITRA_STATUS_OK ||
        insitra_config_load_yaml_string(cfg, FUZZ_CKPT_MODEL_YAML) != INSITRA_STATUS_OK ||
        insitra_trainer_create(&trainer, cfg, MPI_COMM_WORLD) != INSITRA_STATUS_OK)
        broken("the seeds' trainer", insitra_last_error());
    insitra_config_free(cfg);
    atexit(finish);
    return 0;
}

static void write_input(const uint8_t *data, size_t size)
{
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, size, f) != size || fclose(f) != 0) broken("writing the input", path);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    write_input(data, size);
    char *verify[] = {"insitra-ckpt", "verify", path, NULL};
    const int verdict = insitra_ckpt_main(3, verify);
    if (verdict != 0 && verdict != 1) broken("verify exits 0 (valid) or 1 (not)", NULL);

    /* The load may have changed nothing, everything, or reset the trainer:
     * the step after it must still run (or refuse) on a consistent state. */
    const insitra_status loaded = insitra_checkpoint_load(trainer, path, NULL, 0);
    if (loaded != INSITRA_STATUS_OK && insitra_last_error()[0] == '\0')
        broken("a refused load says why", NULL);
    if (loaded == INSITRA_STATUS_OK && verdict != 0)
        broken("a file the library loads is one insitra-ckpt verify calls valid", path);
    /* HDF5 keeps what a reader forgets to close (LeakSanitizer cannot see
     * it): every file, group, dataset, attribute must be closed by now. */
    const ssize_t open = H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL);
    if (open != 0) {
        char n[32];
        snprintf(n, sizeof n, "%zd still open", open);
        broken("verify and load close every HDF5 object they open", n);
    }
    (void)insitra_train_step(trainer, NULL);
    return 0;
}
