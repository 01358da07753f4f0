/*
 * The model of the checkpoint seeds (make_ckpt_seeds.c) and of the trainer
 * fuzz_ckpt.c loads them into: the two must agree, or every load would stop
 * at the model check and the fuzzer would never reach the tensors.
 */
#ifndef INSITRA_FUZZ_CKPT_SEED_H
#define INSITRA_FUZZ_CKPT_SEED_H

/* As small as the format allows while keeping every kind of tensor: two
 * heads, one block, a few samples. The seeds stay a few KiB each. */
#define FUZZ_CKPT_MODEL_YAML                                                         \
    "model: {seq_len: 2, in_features: 1, out_features: 1, d_model: 4, n_layers: 1, " \
    "n_heads: 2}\n"                                                                  \
    "training: {batch_size: 2, seed: 7}\n"                                           \
    "data: {capacity: 4}\n"

#endif /* INSITRA_FUZZ_CKPT_SEED_H */
