/*
 * Tensors in a checkpoint at any parallel.tp (issue #18, docs/checkpoint.md):
 * the selections and CRC shares of ckpt_format.h, with no trainer. In one
 * process, "ranks" of a tp group write their ZeRO slots (uneven, cutting
 * rows) of their local tensors into whole-shape datasets; the file must hold
 * the whole tensors, the XOR of the CRC shares must be the CRC of each whole
 * tensor, and reading back at another tp and slotting must give each rank
 * its local tensor. The local tensors are cut here from the split's
 * definition (lib/model.h), not through insitra_tensor_tp_window, so a wrong
 * window fails too.
 *
 *   test_ckpt_tp_select <scratch dir>
 */
#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ckpt_format.h"
#include "crc32c.h"
#include "model.h"
#include "test_util.h"

/* A small model whose every split is exercised: C = 8, 4 heads, MLP 32. */
static insitra_model_dims dims_at(int64_t tp)
{
    return (insitra_model_dims){.seq_len = 8, .in_features = 3, .out_features = 2, .d_model = 8,
                                .n_layers = 2, .n_heads = 4, .tp = tp};
}

/* Slot s of `slots` over n elements, as uneven as ZeRO's can be, cutting rows. */
static void slot_of(int64_t n, int64_t slots, int64_t s, int64_t *first, int64_t *count)
{
    const int64_t len = (n + slots - 1) / slots;
    *first = s * len < n ? s * len : n;
    *count = (s + 1) * len < n ? len : n - *first;
}

static bool is_whole(const insitra_tensor_desc *t)
{
    return t->global_shape[0] == t->shape[0] && t->global_shape[1] == t->shape[1];
}

/* Every tp rank's slots of every tensor of layout l (locals: (tp, l total))
 * written into a new file of whole tensors; *crc[i] the XOR of the shares. */
static void write_file(insitra_test *t, const char *path, const insitra_param_layout *l, int64_t tp,
                       int64_t slots, const float *locals, uint32_t *crc)
{
    hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (!EXPECT(t, f >= 0, "cannot create %s", path)) return;
    for (int64_t i = 0; i < l->num_tensors; i++) {
        const insitra_tensor_desc *d = &l->tensors[i];
        const hsize_t gdims[2] = {(hsize_t)d->global_shape[0], (hsize_t)d->global_shape[1]};
        hid_t space = H5Screate_simple(d->ndim, gdims, NULL);
        hid_t dset = H5Dcreate2(f, d->name, H5T_IEEE_F32LE, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
        H5Sclose(space);
        crc[i] = 0;
        for (int64_t r = 0; r < tp; r++)
            for (int64_t s = 0; s < slots; s++) {
                int64_t first, count;
                slot_of(d->numel, slots, s, &first, &count);
                if (d->split == INSITRA_TP_REPLICATED && r != 0) count = 0; /* tp rank 0 writes */
                const float *data = locals + r * l->total + d->offset + first;
                hid_t fs, ms;
                EXPECT_OK(t, insitra_ckpt_select_tensor(dset, d, r, first, count, &fs, &ms), d->name);
                EXPECT(t, H5Dwrite(dset, H5T_NATIVE_FLOAT, ms, fs, H5P_DEFAULT, data) >= 0, "write %s", d->name);
                H5Sclose(fs);
                H5Sclose(ms);
                crc[i] ^= insitra_ckpt_tensor_crc(d, r, first, count, data);
            }
        H5Dclose(dset);
    }
    H5Fclose(f);
}

/* The file read back by tp ranks of layout l, in `slots` slots each, against
 * the locals cut from the whole tensors (whole: global layout g's buffer). */
static void check_read(insitra_test *t, const char *path, const insitra_param_layout *l, int64_t tp, int64_t slots,
                       const insitra_param_layout *g, const float *whole)
{
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (!EXPECT(t, f >= 0, "cannot open %s", path)) return;
    float *want = malloc((size_t)l->total * sizeof(float)), *got = malloc((size_t)l->total * sizeof(float));
    int bad = 0;
    for (int64_t r = 0; r < tp; r++) {
        memset(got, 0, (size_t)l->total * sizeof(float));
        for (int64_t i = 0; i < l->num_tensors; i++) {
            const insitra_tensor_desc *d = &l->tensors[i];
            insitra_test_tp_cut(d, tp, r, whole + g->tensors[i].offset, want + d->offset);
            hid_t dset = H5Dopen2(f, d->name, H5P_DEFAULT);
            for (int64_t s = 0; s < slots; s++) {
                int64_t first, count;
                slot_of(d->numel, slots, s, &first, &count);
                hid_t fs, ms;
                EXPECT_OK(t, insitra_ckpt_select_tensor(dset, d, r, first, count, &fs, &ms), d->name);
                EXPECT(t, H5Dread(dset, H5T_NATIVE_FLOAT, ms, fs, H5P_DEFAULT, got + d->offset + first) >= 0,
                       "read %s", d->name);
                H5Sclose(fs);
                H5Sclose(ms);
            }
            H5Dclose(dset);
        }
        for (int64_t i = 0; i < l->num_tensors; i++) {
            const insitra_tensor_desc *d = &l->tensors[i];
            if (memcmp(want + d->offset, got + d->offset, (size_t)d->numel * sizeof(float)) != 0 && bad++ < 5)
                EXPECT(t, false, "tp %lld rank %lld, %lld slots: '%s' read back wrong", (long long)tp, (long long)r,
                       (long long)slots, d->name);
        }
    }
    EXPECT(t, bad == 0, "%d tensors read back wrong", bad);
    free(want);
    free(got);
    H5Fclose(f);
}

/* The file as whole tensors (what a tp = 1 reader, insitra-ckpt and an
 * export see) against the reference, and the combined CRCs against the
 * CRC of each whole tensor's bytes. */
static void check_whole(insitra_test *t, const char *path, const insitra_param_layout *g, const float *whole,
                        const uint32_t *crc, const char *what)
{
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (!EXPECT(t, f >= 0, "cannot open %s", path)) return;
    float *got = calloc((size_t)g->total, sizeof(float));
    for (int64_t i = 0; i < g->num_tensors; i++) {
        const insitra_tensor_desc *d = &g->tensors[i];
        hid_t dset = H5Dopen2(f, d->name, H5P_DEFAULT);
        EXPECT(t, H5Dread(dset, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, got + d->offset) >= 0, "read %s",
               d->name);
        H5Dclose(dset);
        EXPECT(t, memcmp(got + d->offset, whole + d->offset, (size_t)d->numel * sizeof(float)) == 0,
               "%s: '%s' in the file is not the whole tensor", what, d->name);
        const uint32_t want = insitra_crc32c(0, whole + d->offset, (size_t)d->numel * sizeof(float));
        EXPECT(t, crc[i] == want, "%s: '%s': the shares combine to %08x, the tensor's CRC32C is %08x", what, d->name,
               crc[i], want);
    }
    free(got);
    H5Fclose(f);
}

int main(int argc, char **argv)
{
    insitra_test t = insitra_test_begin(&argc, &argv, "ckpt_tp_select");
    if (argc < 2) {
        EXPECT(&t, false, "usage: test_ckpt_tp_select <scratch dir>");
        return insitra_test_end(&t);
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/tp_select.h5", argv[1]);
    const int64_t tps[] = {1, 2, 4};
    insitra_param_layout layouts[3];
    for (int k = 0; k < 3; k++) {
        const insitra_model_dims d = dims_at(tps[k]);
        EXPECT_OK(&t, insitra_param_layout_create(&layouts[k], &d), "layout");
    }
    const insitra_param_layout *g = &layouts[0];
    /* every element distinct and exact in float32 */
    float *whole = malloc((size_t)g->total * sizeof(float));
    for (int64_t i = 0; i < g->total; i++) whole[i] = (float)(i + 1);
    uint32_t *crc = calloc((size_t)g->num_tensors, sizeof *crc);
    /* splits are what the test is about: tp 2 must have every kind */
    int kinds[4] = {0};
    for (int64_t i = 0; i < layouts[1].num_tensors; i++) kinds[layouts[1].tensors[i].split]++;
    EXPECT(&t, kinds[0] && kinds[1] && kinds[2] && kinds[3], "tp 2 lacks a kind of split: %d %d %d %d", kinds[0],
           kinds[1], kinds[2], kinds[3]);
    for (int k = 0; k < 3; k++) {
        const insitra_param_layout *l = &layouts[k];
        const int64_t tp = tps[k];
        EXPECT(&t, l->num_tensors == g->num_tensors, "tensor count");
        for (int64_t i = 0; i < l->num_tensors && tp > 1; i++)
            EXPECT(&t, is_whole(&l->tensors[i]) == (l->tensors[i].split == INSITRA_TP_REPLICATED),
                   "tp %lld: '%s' split %d but local shape (%lld, %lld) of (%lld, %lld)", (long long)tp,
                   l->tensors[i].name, (int)l->tensors[i].split, (long long)l->tensors[i].shape[0],
                   (long long)l->tensors[i].shape[1], (long long)l->tensors[i].global_shape[0],
                   (long long)l->tensors[i].global_shape[1]);
        /* the tp ranks' local tensors, cut from the whole ones */
        float *locals = malloc((size_t)(tp * l->total) * sizeof(float));
        for (int64_t r = 0; r < tp; r++)
            for (int64_t i = 0; i < l->num_tensors; i++)
                insitra_test_tp_cut(&l->tensors[i], tp, r, whole + g->tensors[i].offset,
                                    locals + r * l->total + l->tensors[i].offset);
        const int64_t slots = k == 1 ? 3 : 2; /* uneven slots cutting rows */
        char what[64];
        snprintf(what, sizeof what, "written at tp %lld in %lld slots", (long long)tp, (long long)slots);
        write_file(&t, path, l, tp, slots, locals, crc);
        check_whole(&t, path, g, whole, crc, what);
        /* read back at every tp, with another slotting */
        for (int j = 0; j < 3; j++) check_read(&t, path, &layouts[j], tps[j], j == 2 ? 5 : 1, g, whole);
        free(locals);
    }
    /* A count of 0 selects nothing and shares nothing. */
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    hid_t dset = H5Dopen2(f, layouts[1].tensors[layouts[1].first_block_tensor + INSITRA_BLOCK_FCPROJ_W].name,
                          H5P_DEFAULT);
    hid_t fs, ms;
    EXPECT_OK(&t, insitra_ckpt_select_tensor(dset, &layouts[1].tensors[0], 1, 0, 0, &fs, &ms), "empty selection");
    EXPECT(&t, H5Sget_select_npoints(fs) == 0, "an empty piece selects %lld elements",
           (long long)H5Sget_select_npoints(fs));
    EXPECT(&t, insitra_ckpt_tensor_crc(&layouts[1].tensors[0], 1, 0, 0, whole) == 0, "an empty piece's share");
    H5Sclose(fs);
    H5Sclose(ms);
    H5Dclose(dset);
    H5Fclose(f);
    remove(path);
    for (int k = 0; k < 3; k++) insitra_param_layout_free(&layouts[k]);
    free(whole);
    free(crc);
    return insitra_test_end(&t);
}
