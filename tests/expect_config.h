/* Checks shared by the configuration tests, on the test's context
 * (test_util.h). */
#ifndef INSITRA_TEST_EXPECT_CONFIG_H
#define INSITRA_TEST_EXPECT_CONFIG_H

#include <stdio.h>
#include <string.h>

#include "insitra.h"
#include "test_util.h"

/* The key's text form is want. */
static inline void expect_value(insitra_test *T, const insitra_config *cfg, const char *key, const char *want)
{
    char buf[256] = "";
    insitra_status s = insitra_config_get(cfg, key, buf, sizeof buf);
    EXPECT(T, s == INSITRA_STATUS_OK && strcmp(buf, want) == 0, "%s = '%s', expected '%s' (%s)", key, buf,
           want, insitra_last_error());
}

/* The call failed with status want and a message containing each word (NULL: none). */
static inline void expect_error(insitra_test *T, insitra_status got, insitra_status want, const char *w1,
                                const char *w2, const char *w3)
{
    const char *msg = insitra_last_error();
    EXPECT(T, got == want, "status %s, expected %s (%s)", insitra_status_name(got), insitra_status_name(want),
           msg);
    const char *words[] = {w1, w2, w3};
    for (int i = 0; i < 3; i++)
        if (words[i]) EXPECT(T, strstr(msg, words[i]), "message '%s' lacks '%s'", msg, words[i]);
    printf("  error as expected: %.300s\n", msg);
}

/* The YAML text loads. */
static inline void expect_loads(insitra_test *T, insitra_config *cfg, const char *yaml)
{
    EXPECT(T, insitra_config_load_yaml_string(cfg, yaml) == INSITRA_STATUS_OK, "loading '%s': %s", yaml,
           insitra_last_error());
}

#endif
