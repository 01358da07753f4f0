/*
 * lib/tp_params.h on as many ranks as the tp group has (1, 2 or 4), no
 * trainer: each rank's slice of the whole parameters is its part as the
 * split defines it (cut here from the definition, not through
 * insitra_tensor_tp_window), and the gather of the slices gives back the
 * whole parameters on every rank, replicated tensors from tp rank 0.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm.h"
#include "model.h"
#include "test_util.h"
#include "tp_params.h"

int main(int argc, char **argv)
{
    insitra_test t = insitra_test_begin(&argc, &argv, "tp_params");
    insitra_comm tp = {.comm = MPI_COMM_NULL};
    EXPECT_OK(&t, insitra_comm_create(&tp, MPI_COMM_WORLD), "comm");
    insitra_model_dims d = {.seq_len = 8, .in_features = 3, .out_features = 2, .d_model = 8, .n_layers = 2,
                            .n_heads = 4, .tp = 1};
    insitra_param_layout whole, local;
    EXPECT_OK(&t, insitra_param_layout_create(&whole, &d), "whole layout");
    d.tp = tp.size;
    EXPECT_OK(&t, insitra_param_layout_create(&local, &d), "local layout");
    EXPECT(&t, tp.size == 1 || local.total < whole.total, "tp %d: local %lld of whole %lld floats", tp.size,
           (long long)local.total, (long long)whole.total);
    float *w = malloc((size_t)whole.total * sizeof(float)), *back = malloc((size_t)whole.total * sizeof(float));
    float *mine = malloc((size_t)local.total * sizeof(float)), *want = malloc((size_t)local.total * sizeof(float));
    float *scratch = malloc((size_t)local.total * sizeof(float));
    for (int64_t i = 0; i < whole.total; i++) w[i] = (float)(i + 1);

    insitra_tp_params_slice(&whole, w, &local, tp.rank, mine);
    for (int64_t i = 0; i < local.num_tensors; i++) {
        const insitra_tensor_desc *l = &local.tensors[i];
        insitra_test_tp_cut(l, tp.size, tp.rank, w + whole.tensors[i].offset, want + l->offset);
        EXPECT(&t, memcmp(mine + l->offset, want + l->offset, (size_t)l->numel * sizeof(float)) == 0,
               "tp %d rank %d: slice of '%s' is not its part", tp.size, tp.rank, l->name);
    }

    /* replicated tensors differ off tp rank 0 here: the whole model must take rank 0's */
    for (int64_t i = 0; i < local.num_tensors; i++)
        if (local.tensors[i].split == INSITRA_TP_REPLICATED && tp.rank != 0)
            for (int64_t j = 0; j < local.tensors[i].numel; j++) mine[local.tensors[i].offset + j] = -1.0f;
    memset(back, 0, (size_t)whole.total * sizeof(float));
    EXPECT_OK(&t, insitra_tp_params_gather(&tp, &local, mine, scratch, &whole, back), "gather");
    for (int64_t i = 0; i < whole.num_tensors; i++) {
        const insitra_tensor_desc *g = &whole.tensors[i];
        EXPECT(&t, memcmp(back + g->offset, w + g->offset, (size_t)g->numel * sizeof(float)) == 0,
               "tp %d rank %d: gathered '%s' is not the whole tensor", tp.size, tp.rank, g->name);
    }
    if (t.rank == 0) printf("tp %d: slices and gather of %lld tensors exact\n", tp.size, (long long)whole.num_tensors);
    free(w);
    free(back);
    free(mine);
    free(want);
    free(scratch);
    insitra_param_layout_free(&whole);
    insitra_param_layout_free(&local);
    insitra_comm_free(&tp);
    return insitra_test_end(&t);
}
