/* LEGACY: EXPECT(cond, printf-args) on the globals `rank` and `failures`,
 * kept only for the tests that have not moved to test_util.h yet
 * (test_config.c, test_api_errors.c, test_checkpoint.c, test_ckpt_cli_make.c).
 * New tests include test_util.h, whose EXPECT takes the test's context; once
 * those four are converted this file goes. EXPECT_LEGACY is the same check
 * under a name that cannot clash with test_util.h's EXPECT. */
#ifndef INSITRA_TEST_EXPECT_H
#define INSITRA_TEST_EXPECT_H

#ifdef INSITRA_TEST_UTIL_H
#error "expect.h and test_util.h define EXPECT differently: include one of them"
#endif

#include <stdio.h>

#define EXPECT_LEGACY(cond, ...)                                      \
    do {                                                              \
        if (!(cond)) {                                                \
            printf("rank %d FAIL %s:%d: ", rank, __FILE__, __LINE__); \
            printf(__VA_ARGS__);                                      \
            printf("\n");                                             \
            failures++;                                               \
        }                                                             \
    } while (0)
#define EXPECT(cond, ...) EXPECT_LEGACY(cond, __VA_ARGS__)

#endif
