/*
 * The trainer's side of checkpoints: the state view ckpt/ works on, built
 * from the trainer, and what a failed load resets (trainer_ckpt.c).
 */
#ifndef INSITRA_TRAINER_CKPT_H
#define INSITRA_TRAINER_CKPT_H

#include <stddef.h>

#include "ckpt_state.h"
#include "trainer.h"

/* The view of t's state: pointers into t, valid while t lives. */
void insitra_trainer_ckpt_view(insitra_trainer *t, insitra_ckpt_state *view);

/* Collective: the backend's state is brought to the host copies, then saved to dir. */
insitra_status insitra_trainer_ckpt_save(insitra_trainer *t, const char *dir, char *path_out,
                                         size_t path_size);
/* Collective: loads path (a file or a directory). A failed load that had
 * written into the state puts the trainer back where trainer_create left
 * it; the backend then takes the host state either way. */
insitra_status insitra_trainer_ckpt_load(insitra_trainer *t, const char *path, char *path_out,
                                         size_t path_size);

#endif /* INSITRA_TRAINER_CKPT_H */
