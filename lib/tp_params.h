/*
 * The whole model's parameters (a layout made with tp = 1, what exports,
 * surrogates and checkpoints hold) and a tp rank's part of them (a layout of
 * the trainer's parallel.tp, lib/model.h): the one place that moves
 * parameters between the two, by insitra_tensor_tp_runs. Replicated tensors
 * are the same on every tp rank: the whole model takes tp rank 0's.
 */
#ifndef INSITRA_TP_PARAMS_H
#define INSITRA_TP_PARAMS_H

#include <stdint.h>

#include "comm.h"
#include "model.h"

struct insitra_trainer;

/* Collective over the tp group: every rank's local parameters (local_params,
 * local->total floats, local being the layout of tp = tp->size) into the
 * whole ones on every rank of the group (whole_params, whole->total floats).
 * scratch: local->total floats, receiving the other ranks' parts in turn
 * (NULL when tp->size is 1). Returns MPI_ERROR, the same on every rank, when
 * a broadcast fails. */
insitra_status insitra_tp_params_gather(const insitra_comm *tp, const insitra_param_layout *local,
                                        const float *local_params, float *scratch,
                                        const insitra_param_layout *whole, float *whole_params);

/* Local: tp rank tp_rank's part (local layout, of tp ranks) of the whole
 * parameters (whole layout, tp = 1), unit by unit (insitra_param_unit_slice). */
void insitra_tp_params_slice(const insitra_param_layout *whole, const float *whole_params,
                             const insitra_param_layout *local, int64_t tp_rank, float *local_params);

/* Collective over the trainer's ranks: its whole model on every rank, for
 * an export or a surrogate. *whole is a layout of tp = 1 made here and
 * *params its floats (malloc'd); the caller frees both on success. Every
 * rank returns the same status. */
insitra_status insitra_trainer_whole_params(struct insitra_trainer *t, insitra_param_layout *whole,
                                            float **params);

#endif /* INSITRA_TP_PARAMS_H */
