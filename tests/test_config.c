/*
 * Configuration: defaults, set/get by dotted key, YAML files, and every kind
 * of bad input: unknown keys, malformed YAML (line and column), values out
 * of range, wrong types, and relations between keys. A failed call must
 * leave the configuration unchanged.
 */
#include <mpi.h>
#include <stdio.h>
#include <string.h>

#include "config.h"
#include "expect_config.h"
#include "insitra.h"
#include "test_util.h"

int main(int argc, char **argv)
{
    insitra_test test = insitra_test_begin(&argc, &argv, "config");
    insitra_test *T = &test;
    const char *dir = argc > 1 ? argv[1] : "tests/data";
    char path[1024];
    insitra_config *cfg = NULL;
    if (!EXPECT_OK(T, insitra_config_create(&cfg), "create")) return insitra_test_end(T);

    /* defaults */
    expect_value(T, cfg, "model.d_model", "128");
    expect_value(T, cfg, "model.causal", "false");
    expect_value(T, cfg, "optimizer.lr", "0.001");
    expect_value(T, cfg, "log.jsonl", "");
    EXPECT(T, insitra_config_validate(cfg) == INSITRA_STATUS_OK, "defaults validate: %s",
           insitra_last_error());

    /* set/get */
    EXPECT_OK(T, insitra_config_set(cfg, "model.d_model", "256"), "set");
    expect_value(T, cfg, "model.d_model", "256");
    EXPECT_OK(T, insitra_config_set(cfg, "model.causal", "yes"), "set bool");
    expect_value(T, cfg, "model.causal", "true");

    /* bad values: nothing changes */
    /* Context parallelism: at least 1, dividing model.seq_len, on either device. */
    expect_error(T, insitra_config_set(cfg, "parallel.cp", "0"), INSITRA_STATUS_CONFIG_ERROR, "'parallel.cp'",
                 "out of range [1, 4096]", NULL);
    EXPECT_OK(T, insitra_config_set(cfg, "model.seq_len", "12"), "set");
    EXPECT_OK(T, insitra_config_set(cfg, "parallel.cp", "5"), "set parallel.cp");
    expect_error(T, insitra_config_validate(cfg), INSITRA_STATUS_CONFIG_ERROR, "'parallel.cp'",
                 "does not divide model.seq_len = 12", NULL);
    EXPECT_OK(T, insitra_config_set(cfg, "parallel.cp", "4"), "set parallel.cp");
    EXPECT(T, insitra_config_validate(cfg) == INSITRA_STATUS_OK, "cp 4 of 12 tokens validates: %s",
           insitra_last_error());
    EXPECT_OK(T, insitra_config_set(cfg, "device", "cuda"), "set device");
    EXPECT(T, insitra_config_validate(cfg) == INSITRA_STATUS_OK, "cp 4 with device = cuda validates: %s",
           insitra_last_error());
    EXPECT_OK(T, insitra_config_set(cfg, "device", "cpu"), "set device");
    EXPECT_OK(T, insitra_config_set(cfg, "parallel.cp", "1"), "set parallel.cp");
    EXPECT_OK(T, insitra_config_set(cfg, "model.seq_len", "64"), "set");
    expect_error(T, insitra_config_set(cfg, "model.d_model", "-3"), INSITRA_STATUS_CONFIG_ERROR,
                 "model.d_model", "-3", "[1, 65536]");
    expect_error(T, insitra_config_set(cfg, "model.d_model", "12x"), INSITRA_STATUS_CONFIG_ERROR,
                 "model.d_model", "12x", "integer");
    expect_error(T, insitra_config_set(cfg, "model.d_model", "1.5"), INSITRA_STATUS_CONFIG_ERROR,
                 "model.d_model", "integer", NULL);
    expect_error(T, insitra_config_set(cfg, "optimizer.lr", "nan"), INSITRA_STATUS_CONFIG_ERROR,
                 "optimizer.lr", "finite", NULL);
    expect_error(T, insitra_config_set(cfg, "model.causal", "maybe"), INSITRA_STATUS_CONFIG_ERROR,
                 "model.causal", "maybe", "boolean");
    expect_value(T, cfg, "model.d_model", "256");
    expect_error(T, insitra_config_set(cfg, "model.d_modle", "4"), INSITRA_STATUS_CONFIG_ERROR,
                 "unknown config key 'model.d_modle'", "model.d_model", NULL);
    expect_error(T, insitra_config_set(cfg, "nosuch", "4"), INSITRA_STATUS_CONFIG_ERROR,
                 "unknown config key 'nosuch'", "sections", NULL);
    expect_error(T, insitra_config_set(NULL, "model.d_model", "4"), INSITRA_STATUS_INVALID_ARGUMENT, "cfg",
                 NULL, NULL);
    char tiny[2];
    expect_error(T, insitra_config_get(cfg, "model.d_model", tiny, sizeof tiny),
                 INSITRA_STATUS_INVALID_ARGUMENT, "model.d_model", "buffer", NULL);

    /* relations between keys */
    insitra_test_set(T, cfg, "model.n_heads", "3");
    expect_error(T, insitra_config_validate(cfg), INSITRA_STATUS_CONFIG_ERROR, "model.n_heads", "3", "256");
    insitra_test_set(T, cfg, "model.n_heads", "4");
    insitra_test_set(T, cfg, "training.micro_batch_size", "5");
    expect_error(T, insitra_config_validate(cfg), INSITRA_STATUS_CONFIG_ERROR, "training.micro_batch_size",
                 "5", "16");
    insitra_test_set(T, cfg, "training.micro_batch_size", "0");
    EXPECT(T, insitra_config_validate(cfg) == INSITRA_STATUS_OK, "valid again: %s", insitra_last_error());

    /* YAML: a good file */
    snprintf(path, sizeof path, "%s/good.yaml", dir);
    EXPECT(T, insitra_config_load_yaml(cfg, path) == INSITRA_STATUS_OK, "load good: %s",
           insitra_last_error());
    expect_value(T, cfg, "model.seq_len", "32");
    expect_value(T, cfg, "model.n_heads", "8");
    expect_value(T, cfg, "model.causal", "true");
    expect_value(T, cfg, "training.micro_batch_size", "4");
    expect_value(T, cfg, "optimizer.lr", "0.00029999999999999997");
    expect_value(T, cfg, "log.jsonl", "metrics.jsonl");
    expect_value(T, cfg, "optimizer.beta1", "0.90000000000000002"); /* untouched default */

    /* YAML errors leave the config as it was, even for keys before the bad one */
    insitra_test_set(T, cfg, "model.d_model", "96");
    snprintf(path, sizeof path, "%s/unknown_key.yaml", dir);
    expect_error(T, insitra_config_load_yaml(cfg, path), INSITRA_STATUS_CONFIG_ERROR, "unknown_key.yaml:3:3",
                 "model.n_layer", "model.n_layers");
    expect_value(T, cfg, "model.d_model", "96"); /* the file's d_model: 64 came before the bad key */
    snprintf(path, sizeof path, "%s/out_of_range.yaml", dir);
    expect_error(T, insitra_config_load_yaml(cfg, path), INSITRA_STATUS_CONFIG_ERROR,
                 "out_of_range.yaml:4:10", "optimizer.beta2", "1.5");
    expect_value(T, cfg, "training.batch_size", "8");
    insitra_test_set(T, cfg, "training.batch_size", "12");
    expect_error(T, insitra_config_load_yaml(cfg, path), INSITRA_STATUS_CONFIG_ERROR, "optimizer.beta2", NULL,
                 NULL);
    expect_value(T, cfg, "training.batch_size", "12"); /* the file's batch_size: 8 was not applied */
    snprintf(path, sizeof path, "%s/malformed.yaml", dir);
    expect_error(T, insitra_config_load_yaml(cfg, path), INSITRA_STATUS_PARSE_ERROR,
                 "malformed.yaml:3:", "malformed YAML", NULL);
    expect_error(T, insitra_config_load_yaml(cfg, "/nonexistent/insitra.yaml"), INSITRA_STATUS_IO_ERROR,
                 "/nonexistent/insitra.yaml", NULL, NULL);
    expect_error(T, insitra_config_load_yaml_string(cfg, "model: [1, 2]"), INSITRA_STATUS_PARSE_ERROR,
                 "<string>:1:8", "lists", NULL);
    expect_error(T, insitra_config_load_yaml_string(cfg, "model:\n  d_model:\n"), INSITRA_STATUS_CONFIG_ERROR,
                 "model.d_model", "no value", NULL);
    expect_error(T, insitra_config_load_yaml_string(cfg, "- a\n"), INSITRA_STATUS_PARSE_ERROR, "lists", NULL,
                 NULL);
    expect_loads(T, cfg, "");                     /* an empty document */
    expect_loads(T, cfg, "data: {capacity: 77}"); /* a flow mapping */
    expect_value(T, cfg, "data.capacity", "77");

    /* device and precision: top-level keys; bf16 is for the GPU only */
    expect_value(T, cfg, "device", "cpu");
    expect_value(T, cfg, "precision", "fp32");
    expect_value(T, cfg, "cuda.graphs", "true");
    expect_loads(T, cfg, "device: cuda\nprecision: bf16\ncuda: {graphs: off}\n");
    expect_value(T, cfg, "device", "cuda");
    expect_value(T, cfg, "precision", "bf16");
    expect_value(T, cfg, "cuda.graphs", "false");
    expect_error(T, insitra_config_set(cfg, "device", "tpu"), INSITRA_STATUS_CONFIG_ERROR, "'device'", "cpu",
                 "cuda");
    expect_error(T, insitra_config_set(cfg, "precision", "fp16"), INSITRA_STATUS_CONFIG_ERROR, "'precision'",
                 "bf16", NULL);
    EXPECT(T, insitra_config_validate(cfg) == INSITRA_STATUS_OK, "cuda + bf16 validate: %s",
           insitra_last_error());
    /* the YAML dump (what checkpoints store) reads back to the same values */
    char dumped[8192];
    EXPECT(T, insitra_config_dump_yaml(cfg, dumped, sizeof dumped) < sizeof dumped, "dump fits");
    EXPECT(T, strncmp(dumped, "device: cuda\nprecision: bf16\n", 29) == 0, "dump starts with '%.40s'",
           dumped);
    insitra_config *back = NULL;
    EXPECT_OK(T, insitra_config_create(&back), "create");
    EXPECT(T, insitra_config_load_yaml_string(back, dumped) == INSITRA_STATUS_OK, "dump reloads: %s",
           insitra_last_error());
    EXPECT(T, insitra_config_hash(back) == insitra_config_hash(cfg), "dump round trip changes the hash");
    insitra_config_free(back);

    /* String values with every kind of character YAML can carry escaped:
     * control bytes, C1 controls, quotes, backslashes, and plain UTF-8. */
    insitra_config *odd = NULL, *odd_back = NULL;
    EXPECT_OK(T, insitra_config_create(&odd), "create");
    EXPECT_OK(T, insitra_config_create(&odd_back), "create");
    EXPECT(T, insitra_config_load_yaml_string(odd, "checkpoint: {dir: \"run\\x01\\t\\n\\\"q\\\" \\\\ "
                                                    "\\u0085\\u0080\\x7f\\u00e9\\u2028 end\"}\n"
                                                    "log: {jsonl: \"m\\x1b[0m.jsonl\"}\n") == INSITRA_STATUS_OK,
           "odd strings load: %s", insitra_last_error());
    EXPECT(T, insitra_config_dump_yaml(odd, dumped, sizeof dumped) < sizeof dumped, "dump fits");
    EXPECT(T, insitra_config_load_yaml_string(odd_back, dumped) == INSITRA_STATUS_OK,
           "the dump of odd strings reloads: %s\n%s", insitra_last_error(), dumped);
    EXPECT(T, insitra_config_hash(odd_back) == insitra_config_hash(odd), "odd strings change in a dump round trip");
    insitra_config_free(odd_back);
    insitra_config_free(odd);

    insitra_test_set(T, cfg, "device", "cpu");
    expect_error(T, insitra_config_validate(cfg), INSITRA_STATUS_CONFIG_ERROR, "'precision'", "device = cuda",
                 NULL);

    insitra_config_free(cfg);
    return insitra_test_end(T);
}
