/* EXPECT(cond, printf-args): report a failed check with its place and count
 * it, without stopping, so one run shows every failure. The including test
 * defines `rank` (its MPI rank) and `failures`. */
#ifndef INSITRA_TEST_EXPECT_H
#define INSITRA_TEST_EXPECT_H

#include <stdio.h>

#define EXPECT(cond, ...)                                             \
    do {                                                              \
        if (!(cond)) {                                                \
            printf("rank %d FAIL %s:%d: ", rank, __FILE__, __LINE__); \
            printf(__VA_ARGS__);                                      \
            printf("\n");                                             \
            failures++;                                               \
        }                                                             \
    } while (0)

#endif
