/*
 * libFuzzer harness: YAML text into insitra_config_load_yaml_string, then
 * the promises docs/config.md makes about what happens next.
 *
 * - A refused load leaves the configuration as it was (all or nothing).
 * - What loads reads back: every key's text from insitra_config_get, set on
 *   a fresh configuration, gives the same configuration (set/get round trip).
 * - What loads is stored: the configuration dumped as YAML (what a
 *   checkpoint stores in its `config` attribute) loads again, to the same
 *   values; otherwise a checkpoint would be written that no load can read.
 *
 * A broken promise aborts (a crash for libFuzzer, with the input saved).
 */
#include <sanitizer/common_interface_defs.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "insitra.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void broken(const char *promise, const char *detail)
{
    /* The sanitizers' report channel: libFuzzer's -close_fd_mask closes
     * stderr (the harness's noise) but keeps that one. */
    char line[8192];
    snprintf(line, sizeof line, "fuzz_config: broken promise: %s: %s", promise, detail ? detail : "");
    __sanitizer_report_error_summary(line);
    abort();
}

static insitra_config *config_new(void)
{
    insitra_config *cfg = NULL;
    if (insitra_config_create(&cfg) != INSITRA_STATUS_OK) broken("create", insitra_last_error());
    return cfg;
}

/* Fails unless a and b hold the same value for every key. */
static void expect_same(const insitra_config *a, const insitra_config *b, const char *promise)
{
    char va[2 * INSITRA_CONFIG_PATH_MAX], vb[2 * INSITRA_CONFIG_PATH_MAX];
    const char *key = insitra_config_first_difference(a, b, va, vb, sizeof va);
    if (key) {
        char detail[5 * INSITRA_CONFIG_PATH_MAX];
        snprintf(detail, sizeof detail, "key %s: '%s' vs '%s'", key, va, vb);
        broken(promise, detail);
    }
}

/* insitra_config_for_each callback: sets the key on the configuration ctx. */
static void set_on(const char *key, const char *value, void *ctx)
{
    if (insitra_config_set(ctx, key, value) != INSITRA_STATUS_OK)
        broken("a value insitra_config_get wrote is accepted by insitra_config_set",
               insitra_last_error());
    /* The getter agrees with the text for_each handed out. */
    char back[2 * INSITRA_CONFIG_PATH_MAX];
    if (insitra_config_get(ctx, key, back, sizeof back) != INSITRA_STATUS_OK ||
        strcmp(back, value) != 0)
        broken("insitra_config_get returns what insitra_config_set stored", key);
}

static void check_dump_loads(const insitra_config *cfg)
{
    const size_t need = insitra_config_dump_yaml(cfg, NULL, 0) + 1;
    char *yaml = malloc(need);
    if (!yaml) return;
    if (insitra_config_dump_yaml(cfg, yaml, need) + 1 != need)
        broken("insitra_config_dump_yaml writes the length it announced", NULL);
    insitra_config *again = config_new();
    if (insitra_config_load_yaml_string(again, yaml) != INSITRA_STATUS_OK)
        broken("the dumped configuration loads again", insitra_last_error());
    expect_same(cfg, again, "the dumped configuration loads to the same values");
    insitra_config_free(again);
    free(yaml);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* The API takes a C string: an embedded NUL ends the text. */
    char *text = malloc(size + 1);
    if (!text) return 0;
    memcpy(text, data, size);
    text[size] = '\0';

    insitra_config *cfg = config_new(), *defaults = config_new();
    if (insitra_config_load_yaml_string(cfg, text) != INSITRA_STATUS_OK) {
        if (insitra_last_error()[0] == '\0') broken("a refused load says why", NULL);
        expect_same(cfg, defaults, "a refused load leaves the configuration unchanged");
    } else {
        (void)insitra_config_validate(cfg); /* may refuse; must not crash */
        insitra_config *copy = config_new();
        insitra_config_for_each(cfg, set_on, copy);
        expect_same(cfg, copy, "set(key, get(key)) for every key rebuilds the configuration");
        insitra_config_free(copy);
        check_dump_loads(cfg);
    }
    insitra_config_free(defaults);
    insitra_config_free(cfg);
    free(text);
    return 0;
}
