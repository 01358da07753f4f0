/*
 * Hostile configuration input (issue #16): keys longer than the key buffer
 * (a stack overflow once), duplicate keys, YAML nulls, integers beyond a
 * double's exact range or beyond int64, paths that are directories or
 * missing, and values inside their ranges whose buffers need more bytes than
 * 64 bits count. Each must be an error that says what is wrong, and leave the
 * configuration as it was.
 */
#include <errno.h>
#include <mpi.h>
#include <stdio.h>
#include <string.h>

#include "config.h"
#include "expect_config.h"
#include "insitra.h"
#include "test_util.h"

/* n copies of c, NUL-terminated, into buf. */
static char *repeat(char *buf, char c, int n)
{
    memset(buf, c, (size_t)n);
    buf[n] = '\0';
    return buf;
}

static void long_keys(insitra_test *T, insitra_config *cfg)
{
    char a[301], b[301], c[301], yaml[1200];
    /* A 255-character key with a child once wrote one byte past the key
     * buffer, three levels of 200 a few hundred: now each is an error. */
    snprintf(yaml, sizeof yaml, "%s: {b: 1}\n", repeat(a, 'a', 255));
    insitra_status s = insitra_config_load_yaml_string(cfg, yaml);
    EXPECT(T, s == INSITRA_STATUS_CONFIG_ERROR || s == INSITRA_STATUS_PARSE_ERROR,
           "255-character section: %s: %s", insitra_status_name(s), insitra_last_error());
    snprintf(yaml, sizeof yaml, "%s:\n  %s:\n    %s: 1\n", repeat(a, 'a', 200), repeat(b, 'b', 200),
             repeat(c, 'c', 200));
    s = insitra_config_load_yaml_string(cfg, yaml);
    EXPECT(T, s == INSITRA_STATUS_CONFIG_ERROR || s == INSITRA_STATUS_PARSE_ERROR,
           "three levels of 200: %s: %s", insitra_status_name(s), insitra_last_error());
    /* Too long with its prefix: the message names the prefix and the limit. */
    snprintf(yaml, sizeof yaml, "model:\n  %s: 1\n", repeat(a, 'x', 251));
    expect_error(T, insitra_config_load_yaml_string(cfg, yaml), INSITRA_STATUS_PARSE_ERROR, "too long",
                 "'model'", "255");
    snprintf(yaml, sizeof yaml, "%s: 1\n", repeat(a, 'y', 300));
    expect_error(T, insitra_config_load_yaml_string(cfg, yaml), INSITRA_STATUS_PARSE_ERROR, "300 characters",
                 "too long", "255");
    /* An empty mapping under an unknown section used to pass unnoticed. */
    expect_error(T, insitra_config_load_yaml_string(cfg, "modle: {}\n"), INSITRA_STATUS_CONFIG_ERROR,
                 "'modle'", "model", NULL);
    expect_error(T, insitra_config_load_yaml_string(cfg, "model: {d_model: {x: 1}}\n"),
                 INSITRA_STATUS_CONFIG_ERROR, "'model.d_model'", NULL, NULL);
}

static void duplicates(insitra_test *T, insitra_config *cfg)
{
    expect_error(T, insitra_config_load_yaml_string(cfg, "model:\n  d_model: 64\n  d_model: 32\n"),
                 INSITRA_STATUS_PARSE_ERROR, "'model.d_model'", "lines 2 and 3", NULL);
    expect_error(T, insitra_config_load_yaml_string(cfg, "model: {d_model: 64}\n\nmodel: {n_layers: 2}\n"),
                 INSITRA_STATUS_PARSE_ERROR, "'model'", "lines 1 and 3", NULL);
    expect_error(T, insitra_config_load_yaml_string(cfg, "device: cpu\ndevice: cuda\n"),
                 INSITRA_STATUS_PARSE_ERROR, "'device'", "lines 1 and 2", NULL);
    expect_value(T, cfg, "model.d_model", "128");
    expect_value(T, cfg, "device", "cpu");
    /* The same name in two sections is no duplicate. */
    expect_loads(T, cfg, "log: {every_steps: 3}\ncheckpoint: {every_steps: 0}\n");
    expect_value(T, cfg, "log.every_steps", "3");
    insitra_config_set(cfg, "log.every_steps", "0");
}

/* A YAML null for a string key is the empty string; for any other key an error. */
static void nulls(insitra_test *T, insitra_config *cfg)
{
    const char *forms[] = {"~", "null", "Null", "NULL", "", "!!null ''"};
    for (size_t i = 0; i < sizeof forms / sizeof *forms; i++) {
        char yaml[128];
        insitra_config_set(cfg, "log.jsonl", "metrics.jsonl");
        snprintf(yaml, sizeof yaml, "log:\n  jsonl: %s\n", forms[i]);
        expect_loads(T, cfg, yaml);
        expect_value(T, cfg, "log.jsonl", "");
    }
    /* Quoted, or tagged as a string, it is the text itself. */
    expect_loads(T, cfg, "checkpoint: {dir: '~'}\nlog: {jsonl: !!str null}");
    expect_value(T, cfg, "checkpoint.dir", "~");
    expect_value(T, cfg, "log.jsonl", "null");
    insitra_config_set(cfg, "checkpoint.dir", "");
    insitra_config_set(cfg, "log.jsonl", "");
    expect_error(T, insitra_config_load_yaml_string(cfg, "training: {seed: ~}\n"),
                 INSITRA_STATUS_CONFIG_ERROR, "'training.seed'", "no value", "<string>:1:");
    expect_error(T, insitra_config_load_yaml_string(cfg, "model:\n  causal: null\n"),
                 INSITRA_STATUS_CONFIG_ERROR, "'model.causal'", "no value", NULL);
    expect_error(T, insitra_config_load_yaml_string(cfg, "device:\n"), INSITRA_STATUS_CONFIG_ERROR,
                 "'device'", "no value", NULL);
}

static void integers(insitra_test *T, insitra_config *cfg)
{
    /* 2^53 + 1 has no double: it was rounded to 2^53 and accepted. */
    expect_error(T, insitra_config_set(cfg, "training.seed", "9007199254740993"), INSITRA_STATUS_CONFIG_ERROR,
                 "'training.seed'", "out of range", "[0, 9007199254740992]");
    EXPECT(T, insitra_config_set(cfg, "training.seed", "9007199254740991") == INSITRA_STATUS_OK,
           "2^53 - 1: %s", insitra_last_error());
    expect_value(T, cfg, "training.seed", "9007199254740991");
    EXPECT(T, insitra_config_set(cfg, "data.capacity", "9007199254740992") == INSITRA_STATUS_OK, "2^53: %s",
           insitra_last_error());
    expect_value(T, cfg, "data.capacity", "9007199254740992");
    insitra_config_set(cfg, "data.capacity", "1024");
    /* Beyond int64: out of range (with the range), not "not an integer". */
    expect_error(T, insitra_config_set(cfg, "model.d_model", "99999999999999999999"),
                 INSITRA_STATUS_CONFIG_ERROR, "out of range", "[1, 65536]", NULL);
    expect_error(T, insitra_config_set(cfg, "training.seed", "-99999999999999999999"),
                 INSITRA_STATUS_CONFIG_ERROR, "out of range", "[0, 9007199254740992]", NULL);
    expect_error(T, insitra_config_load_yaml_string(cfg, "data:\n  capacity: 18446744073709551616\n"),
                 INSITRA_STATUS_CONFIG_ERROR, "<string>:2:13", "out of range", "'data.capacity'");
    expect_error(T, insitra_config_set(cfg, "optimizer.lr", "1e400"), INSITRA_STATUS_CONFIG_ERROR,
                 "out of range", "[0, 10]", NULL);
    expect_error(T, insitra_config_set(cfg, "model.d_model", "12 34"), INSITRA_STATUS_CONFIG_ERROR,
                 "not an integer", NULL, NULL);
    expect_value(T, cfg, "training.seed", "9007199254740991");
    expect_value(T, cfg, "model.d_model", "128");
    insitra_config_set(cfg, "training.seed", "1234");
}

static void paths(insitra_test *T, insitra_config *cfg, const char *dir)
{
    expect_error(T, insitra_config_load_yaml(cfg, dir), INSITRA_STATUS_IO_ERROR, dir, "is a directory", NULL);
    char missing[1100];
    snprintf(missing, sizeof missing, "%s/no-such-config.yaml", dir);
    expect_error(T, insitra_config_load_yaml(cfg, missing), INSITRA_STATUS_IO_ERROR, missing,
                 strerror(ENOENT), NULL);
}

/* Values inside their ranges whose buffers cannot be counted in 64 bits:
 * data.capacity 2^52 once wrapped the store's size to zero bytes. */
static void sizes(insitra_test *T, insitra_config *cfg)
{
    const char *capacities[] = {"4503599627370496", "9007199254740992"};
    for (int i = 0; i < 2; i++) {
        insitra_config_set(cfg, "data.capacity", capacities[i]);
        expect_error(T, insitra_config_validate(cfg), INSITRA_STATUS_CONFIG_ERROR, "'data.capacity'",
                     capacities[i], "bytes");
        insitra_plan plan;
        expect_error(T, insitra_plan_stage(cfg, 4, 3, &plan), INSITRA_STATUS_CONFIG_ERROR, "'data.capacity'",
                     NULL, NULL);
    }
    /* Near the limit but counted: valid (the allocation decides). */
    insitra_config_set(cfg, "data.capacity", "1099511627776");
    EXPECT(T, insitra_config_validate(cfg) == INSITRA_STATUS_OK, "capacity 2^40: %s", insitra_last_error());
    insitra_config_set(cfg, "data.capacity", "1024");

    /* The attention scores, B x H x T x T per layer, every key at its maximum. */
    const char *big[][2] = {{"training.batch_size", "1048576"}, {"model.n_heads", "1024"},
                            {"model.d_model", "65536"},         {"model.seq_len", "65536"},
                            {"model.n_layers", "1024"}};
    for (int i = 0; i < 5; i++)
        EXPECT(T, insitra_config_set(cfg, big[i][0], big[i][1]) == INSITRA_STATUS_OK, "%s", big[i][0]);
    expect_error(T, insitra_config_validate(cfg), INSITRA_STATUS_CONFIG_ERROR, "activations", "model.seq_len",
                 "training.batch_size");
    insitra_plan plan;
    for (int device = 0; device < 2; device++) {
        insitra_config_set(cfg, "device", device ? "cuda" : "cpu");
        expect_error(T, insitra_plan_stage(cfg, 1, 0, &plan), INSITRA_STATUS_CONFIG_ERROR, "activations",
                     NULL, NULL);
    }
    insitra_config_set(cfg, "device", "cpu");
    /* A smaller batch fits; the plan's figures are then exact, not wrapped. */
    insitra_config_set(cfg, "training.batch_size", "1");
    insitra_config_set(cfg, "model.n_layers", "1");
    insitra_config_set(cfg, "model.seq_len", "4096");
    EXPECT(T, insitra_plan_stage(cfg, 8, 3, &plan) == INSITRA_STATUS_OK, "plan: %s", insitra_last_error());
    /* At least the layer's qkv (T,3C); below one (H,T,T) score buffer, which
     * the blocked CPU attention never makes (lib/cpu/attention.h). */
    EXPECT(T,
           plan.memory.activation_bytes > 3 * (int64_t)4096 * 65536 * 4 &&
               plan.memory.activation_bytes < (int64_t)1024 * 4096 * 4096 * 4 &&
               plan.memory.total_bytes > plan.memory.activation_bytes,
           "activation bytes %lld, total %lld", (long long)plan.memory.activation_bytes,
           (long long)plan.memory.total_bytes);
    /* The planner's world size reaches 2^31 - 1: its traffic must not wrap either. */
    insitra_config_set(cfg, "model.seq_len", "64");
    insitra_status s = insitra_plan_stage(cfg, 2147483647, 3, &plan);
    EXPECT(T,
           s == INSITRA_STATUS_CONFIG_ERROR ||
               (s == INSITRA_STATUS_OK && plan.comm_bytes_per_step > 0 && plan.memory.total_bytes > 0),
           "world 2^31 - 1: %s, comm %lld, total %lld (%s)", insitra_status_name(s),
           (long long)plan.comm_bytes_per_step, (long long)plan.memory.total_bytes, insitra_last_error());
    if (s != INSITRA_STATUS_OK) printf("  error as expected: %.300s\n", insitra_last_error());
    /* Stage 2 reduce-scatters every micro-batch: 2^20 of them over a model of
     * 2^45 parameters is more traffic per step than 64 bits count. */
    insitra_config_set(cfg, "training.batch_size", "1048576");
    insitra_config_set(cfg, "training.micro_batch_size", "1");
    insitra_config_set(cfg, "model.n_layers", "1024");
    EXPECT(T, insitra_config_validate(cfg) == INSITRA_STATUS_OK, "huge model: %s", insitra_last_error());
    expect_error(T, insitra_plan_stage(cfg, 2, 2, &plan), INSITRA_STATUS_CONFIG_ERROR, "traffic",
                 "training.micro_batch_size", NULL);
    insitra_config_set(cfg, "training.micro_batch_size", "0");
    const char *defaults[][2] = {{"training.batch_size", "16"}, {"model.n_heads", "4"},
                                 {"model.d_model", "128"},      {"model.n_layers", "4"}};
    for (int i = 0; i < 4; i++) insitra_config_set(cfg, defaults[i][0], defaults[i][1]);
    EXPECT(T, insitra_config_validate(cfg) == INSITRA_STATUS_OK, "defaults again: %s", insitra_last_error());
}

int main(int argc, char **argv)
{
    insitra_test test = insitra_test_begin(&argc, &argv, "config_input");
    insitra_test *T = &test;
    const char *dir = argc > 1 ? argv[1] : "tests/data";
    insitra_config *cfg = NULL;
    if (!EXPECT_OK(T, insitra_config_create(&cfg), "create")) return insitra_test_end(T);
    long_keys(T, cfg);
    duplicates(T, cfg);
    nulls(T, cfg);
    integers(T, cfg);
    paths(T, cfg, dir);
    sizes(T, cfg);
    insitra_config_free(cfg);
    return insitra_test_end(T);
}
