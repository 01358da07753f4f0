/*
 * A small seeded generator (xoshiro256**, seeded through splitmix64) for
 * parameter initialisation and the minibatch sampler. Its whole state is four
 * words, so a checkpoint can store and restore it exactly.
 */
#ifndef INSITRA_RNG_H
#define INSITRA_RNG_H

#include <stdint.h>

typedef struct insitra_rng {
    uint64_t s[4];
} insitra_rng;

/* Distinct streams for distinct (seed, stream) pairs, e.g. stream = rank. */
void insitra_rng_seed(insitra_rng *rng, uint64_t seed, uint64_t stream);
uint64_t insitra_rng_next(insitra_rng *rng);
/* Uniform integer in [0, n), without modulo bias. n > 0. */
uint64_t insitra_rng_below(insitra_rng *rng, uint64_t n);
/* Uniform double in [0, 1). */
double insitra_rng_uniform(insitra_rng *rng);
/* Standard normal (Box-Muller; one value per call, for reproducibility). */
double insitra_rng_normal(insitra_rng *rng);

#endif /* INSITRA_RNG_H */
