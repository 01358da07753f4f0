#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "error.h"
#include "model.h"
#include "normalize.h"

typedef enum { KIND_INT, KIND_REAL, KIND_BOOL, KIND_STRING, KIND_CHOICE } value_kind;

typedef struct {
    const char *key;
    value_kind kind;
    size_t offset;
    double min, max; /* inclusive range for numbers */
    const char *default_value;
    const char *choices[4];  /* KIND_CHOICE: the allowed words, stored as their index */
} config_entry;

#define FIELD(f) offsetof(insitra_config, f)
/* 2^53: the documented upper limit of the counting keys and the seed. Values
 * are parsed as integers (parse_int); the limit sits in the double range field. */
#define INT_MAX_KEY 9.007199254740992e15

/* Every key, its range and default. docs/config.md documents the same table. */
static const config_entry entries[] = {
    {"device", KIND_CHOICE, FIELD(device), 0, 0, "cpu", {"cpu", "cuda"}},
    {"precision", KIND_CHOICE, FIELD(precision), 0, 0, "fp32", {"fp32", "bf16"}},
    {"model.seq_len", KIND_INT, FIELD(model.seq_len), 1, INSITRA_SEQ_LEN_MAX, "64", {0}},
    {"model.in_features", KIND_INT, FIELD(model.in_features), 1, 1048576, "16", {0}},
    {"model.out_features", KIND_INT, FIELD(model.out_features), 1, 1048576, "16", {0}},
    {"model.d_model", KIND_INT, FIELD(model.d_model), 1, 65536, "128", {0}},
    {"model.n_layers", KIND_INT, FIELD(model.n_layers), 1, 1024, "4", {0}},
    {"model.n_heads", KIND_INT, FIELD(model.n_heads), 1, 1024, "4", {0}},
    {"model.causal", KIND_BOOL, FIELD(model.causal), 0, 1, "false", {0}},
    {"model.init_std", KIND_REAL, FIELD(model.init_std), 0, 10, "0.02", {0}},
    {"model.residual", KIND_BOOL, FIELD(model.residual), 0, 1, "false", {0}},
    {"model.residual_inputs", KIND_STRING, FIELD(model.residual_inputs), 0, 0, "", {0}},
    {"training.batch_size", KIND_INT, FIELD(training.batch_size), 1, 1048576, "16", {0}},
    {"training.micro_batch_size", KIND_INT, FIELD(training.micro_batch_size), 0, 1048576, "0", {0}},
    {"training.seed", KIND_INT, FIELD(training.seed), 0, INT_MAX_KEY, "1234", {0}},
    {"training.grad_clip", KIND_REAL, FIELD(training.grad_clip), 0, 1e30, "1.0", {0}},
    {"training.recompute", KIND_CHOICE, FIELD(training.recompute), 0, 0, "none", {"none", "block"}},
    {"optimizer.lr", KIND_REAL, FIELD(optimizer.lr), 0, 10, "1e-3", {0}},
    {"optimizer.min_lr", KIND_REAL, FIELD(optimizer.min_lr), 0, 10, "1e-5", {0}},
    {"optimizer.warmup_steps", KIND_INT, FIELD(optimizer.warmup_steps), 0, INT_MAX_KEY, "100", {0}},
    {"optimizer.decay_steps", KIND_INT, FIELD(optimizer.decay_steps), 1, INT_MAX_KEY, "10000", {0}},
    {"optimizer.beta1", KIND_REAL, FIELD(optimizer.beta1), 0, 0.999999, "0.9", {0}},
    {"optimizer.beta2", KIND_REAL, FIELD(optimizer.beta2), 0, 0.999999, "0.95", {0}},
    {"optimizer.eps", KIND_REAL, FIELD(optimizer.eps), 1e-30, 1, "1e-8", {0}},
    {"optimizer.weight_decay", KIND_REAL, FIELD(optimizer.weight_decay), 0, 1, "0.01", {0}},
    {"data.capacity", KIND_INT, FIELD(data.capacity), 1, INT_MAX_KEY, "1024", {0}},
    {"data.sampler", KIND_CHOICE, FIELD(data.sampler), 0, 0, "random", {"random", "sequential"}},
    {"data.normalize", KIND_CHOICE, FIELD(data.normalize), 0, 0, "off", {"off", "frozen", "running"}},
    {"data.normalize_samples", KIND_INT, FIELD(data.normalize_samples), 0, INT_MAX_KEY, "1024", {0}},
    {"data.normalize_steps", KIND_INT, FIELD(data.normalize_steps), 0, INT_MAX_KEY, "0", {0}},
    {"data.validation_fraction", KIND_REAL, FIELD(data.validation_fraction), 0, 0.5, "0", {0}},
    {"log.every_steps", KIND_INT, FIELD(log.every_steps), 0, INT_MAX_KEY, "0", {0}},
    {"log.jsonl", KIND_STRING, FIELD(log.jsonl), 0, 0, "", {0}},
    {"checkpoint.dir", KIND_STRING, FIELD(checkpoint.dir), 0, 0, "", {0}},
    {"checkpoint.every_steps", KIND_INT, FIELD(checkpoint.every_steps), 0, INT_MAX_KEY, "0", {0}},
    {"checkpoint.keep_last", KIND_INT, FIELD(checkpoint.keep_last), 1, 1000000, "3", {0}},
    {"checkpoint.include_samples", KIND_BOOL, FIELD(checkpoint.include_samples), 0, 1, "false", {0}},
    {"checkpoint.signals", KIND_BOOL, FIELD(checkpoint.signals), 0, 1, "true", {0}},
    {"checkpoint.deadline_seconds", KIND_REAL, FIELD(checkpoint.deadline_seconds), 0, 1e12, "0", {0}},
    {"checkpoint.deadline_env", KIND_STRING, FIELD(checkpoint.deadline_env), 0, 0, "", {0}},
    {"checkpoint.deadline_margin_seconds", KIND_REAL, FIELD(checkpoint.deadline_margin_seconds), 0, 1e9, "120", {0}},
    {"parallel.dp", KIND_INT, FIELD(parallel.dp), 0, 1048576, "0", {0}},
    {"parallel.tp", KIND_INT, FIELD(parallel.tp), 1, 4096, "1", {0}},
    {"parallel.cp", KIND_INT, FIELD(parallel.cp), 1, 4096, "1", {0}},
    {"parallel.zero_stage", KIND_INT, FIELD(parallel.zero_stage), 0, 3, "0", {0}},
    {"parallel.bucket_mib", KIND_REAL, FIELD(parallel.bucket_mib), 0, 1048576, "64", {0}},
    {"cuda.graphs", KIND_BOOL, FIELD(cuda.graphs), 0, 1, "true", {0}},
};
#define NUM_ENTRIES (sizeof entries / sizeof entries[0])

static const config_entry *find_entry(const char *key)
{
    for (size_t i = 0; i < NUM_ENTRIES; i++)
        if (strcmp(entries[i].key, key) == 0) return &entries[i];
    return NULL;
}

/* "model, training, ...": the sections of the table, in table order, into buf. */
static const char *section_list(char *buf, size_t len)
{
    buf[0] = '\0';
    for (size_t i = 0; i < NUM_ENTRIES; i++) {
        const char *key = entries[i].key, *dot = strchr(key, '.');
        const bool seen = i > 0 && dot && strncmp(entries[i - 1].key, key, (size_t)(dot - key + 1)) == 0;
        if (!dot || seen) continue;
        const size_t used = strlen(buf);
        snprintf(buf + used, len - used, "%s%.*s", used ? ", " : "", (int)(dot - key), key);
    }
    return buf;
}

/* "unknown config key 'model.dmodel'; keys under 'model.': model.seq_len, ..." */
static insitra_status unknown_key_error(const char *key)
{
    char known[640] = "";
    size_t section_len = strcspn(key, ".");
    for (size_t i = 0; i < NUM_ENTRIES; i++) {
        bool same_section = key[section_len] == '.' &&
                            strncmp(entries[i].key, key, section_len + 1) == 0;
        if (!same_section) continue;
        size_t used = strlen(known);
        snprintf(known + used, sizeof known - used, "%s%s", used ? ", " : "", entries[i].key);
    }
    if (known[0] != '\0')
        return insitra_error_set(INSITRA_STATUS_CONFIG_ERROR,
                                 "unknown config key '%s' (keys in section '%.*s': %s)", key,
                                 (int)section_len, key, known);
    char sections[256];
    return insitra_error_set(INSITRA_STATUS_CONFIG_ERROR, "unknown config key '%s' (sections: %s)", key,
                             section_list(sections, sizeof sections));
}

static insitra_status parse_bool(const char *key, const char *s, bool *out)
{
    static const char *yes[] = {"true", "yes", "on", "1"};
    static const char *no[] = {"false", "no", "off", "0"};
    for (int i = 0; i < 4; i++) {
        if (strcasecmp(s, yes[i]) == 0) { *out = true; return INSITRA_STATUS_OK; }
        if (strcasecmp(s, no[i]) == 0) { *out = false; return INSITRA_STATUS_OK; }
    }
    return insitra_error_set(INSITRA_STATUS_CONFIG_ERROR,
                             "config key '%s': value '%s' is not a boolean (true/false)", key, s);
}

static insitra_status out_of_range(const config_entry *e, const char *s)
{
    if (e->kind == KIND_INT)
        return insitra_error_set(INSITRA_STATUS_CONFIG_ERROR,
                                 "config key '%s': value '%s' is out of range [%" PRId64 ", %" PRId64 "]",
                                 e->key, s, (int64_t)e->min, (int64_t)e->max);
    return insitra_error_set(INSITRA_STATUS_CONFIG_ERROR,
                             "config key '%s': value '%s' is out of range [%.15g, %.15g]", e->key, s,
                             e->min, e->max);
}

/* Whether the text after a number is only blanks. */
static bool only_blanks(const char *s, const char *end)
{
    if (end == s) return false;
    while (*end == ' ' || *end == '\t') end++;
    return *end == '\0';
}

/* Integers are read as integers: through a double, 2^53 + 1 would round to an
 * accepted 2^53. */
static insitra_status parse_int(const config_entry *e, const char *s, int64_t *out)
{
    char *end = NULL;
    errno = 0;
    const long long v = strtoll(s, &end, 10);
    if (!only_blanks(s, end))
        return insitra_error_set(INSITRA_STATUS_CONFIG_ERROR,
                                 "config key '%s': value '%s' is not an integer", e->key, s);
    if (errno == ERANGE || v < (int64_t)e->min || v > (int64_t)e->max) return out_of_range(e, s);
    *out = v;
    return INSITRA_STATUS_OK;
}

static insitra_status parse_real(const config_entry *e, const char *s, double *out)
{
    char *end = NULL;
    errno = 0;
    const double v = strtod(s, &end);
    if (!only_blanks(s, end) || isnan(v) || (isinf(v) && errno != ERANGE))
        return insitra_error_set(INSITRA_STATUS_CONFIG_ERROR,
                                 "config key '%s': value '%s' is not a finite number", e->key, s);
    /* Overflow is out of range; an underflow rounds towards 0 like any decimal. */
    if (isinf(v) || v < e->min || v > e->max) return out_of_range(e, s);
    *out = v;
    return INSITRA_STATUS_OK;
}

/* Bytes of a string field (every string key is a char array in the struct). */
static size_t string_capacity(const config_entry *e)
{
    return e->offset == FIELD(checkpoint.deadline_env) ? sizeof(((insitra_config *)0)->checkpoint.deadline_env)
                                                       : INSITRA_CONFIG_PATH_MAX;
}

static insitra_status set_entry(insitra_config *cfg, const config_entry *e, const char *value)
{
    char *field = (char *)cfg + e->offset;
    switch (e->kind) {
    case KIND_INT:
        return parse_int(e, value, (int64_t *)field);
    case KIND_REAL:
        return parse_real(e, value, (double *)field);
    case KIND_BOOL:
        INSITRA_CHECK(parse_bool(e->key, value, (bool *)field));
        break;
    case KIND_CHOICE:
        for (int i = 0; i < 4 && e->choices[i]; i++)
            if (strcmp(value, e->choices[i]) == 0) {
                *(int *)field = i;
                return INSITRA_STATUS_OK;
            }
        return insitra_error_set(INSITRA_STATUS_CONFIG_ERROR,
                                 "config key '%s': value '%s' is not one of: %s%s%s%s%s%s%s", e->key,
                                 value, e->choices[0], e->choices[1] ? ", " : "",
                                 e->choices[1] ? e->choices[1] : "", e->choices[2] ? ", " : "",
                                 e->choices[2] ? e->choices[2] : "", e->choices[3] ? ", " : "",
                                 e->choices[3] ? e->choices[3] : "");
    case KIND_STRING:
        if (strlen(value) >= string_capacity(e))
            return insitra_error_set(INSITRA_STATUS_CONFIG_ERROR,
                                     "config key '%s': value is %zu characters, at most %zu allowed",
                                     e->key, strlen(value), string_capacity(e) - 1);
        strcpy(field, value);
        break;
    }
    return INSITRA_STATUS_OK;
}

static void format_entry(const insitra_config *cfg, const config_entry *e, char *buf, size_t n)
{
    const char *field = (const char *)cfg + e->offset;
    switch (e->kind) {
    case KIND_INT: snprintf(buf, n, "%" PRId64, *(const int64_t *)field); break;
    case KIND_REAL: snprintf(buf, n, "%.17g", *(const double *)field); break;
    case KIND_BOOL: snprintf(buf, n, "%s", *(const bool *)field ? "true" : "false"); break;
    case KIND_STRING: snprintf(buf, n, "%s", field); break;
    case KIND_CHOICE: snprintf(buf, n, "%s", e->choices[*(const int *)field]); break;
    }
}

uint64_t insitra_config_hash(const insitra_config *cfg)
{
    /* FNV-1a over "key=value;" for every key, in table order. */
    uint64_t h = 0xcbf29ce484222325ull;
    char text[INSITRA_CONFIG_PATH_MAX + 32];
    for (size_t i = 0; i < NUM_ENTRIES; i++) {
        format_entry(cfg, &entries[i], text, sizeof text);
        for (int part = 0; part < 2; part++)
            for (const char *c = part ? text : entries[i].key; *c; c++) {
                h ^= (unsigned char)*c;
                h *= 0x100000001b3ull;
            }
        h ^= ';';
        h *= 0x100000001b3ull;
    }
    return h;
}

const char *insitra_config_first_difference(const insitra_config *a, const insitra_config *b,
                                            char *va, char *vb, size_t len)
{
    for (size_t i = 0; i < NUM_ENTRIES; i++) {
        format_entry(a, &entries[i], va, len);
        format_entry(b, &entries[i], vb, len);
        if (strcmp(va, vb) != 0) return entries[i].key;
    }
    return NULL;
}

insitra_status insitra_config_create(insitra_config **cfg)
{
    if (!cfg) return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT, "config_create: cfg is NULL");
    insitra_config *c = calloc(1, sizeof *c);
    if (!c) return insitra_error_set(INSITRA_STATUS_OUT_OF_MEMORY, "config_create: out of memory");
    for (size_t i = 0; i < NUM_ENTRIES; i++) {
        insitra_status s = set_entry(c, &entries[i], entries[i].default_value);
        if (s != INSITRA_STATUS_OK) { free(c); return s; } /* a bad default is our bug */
    }
    *cfg = c;
    return INSITRA_STATUS_OK;
}

insitra_status insitra_config_free(insitra_config *cfg)
{
    free(cfg);
    return INSITRA_STATUS_OK;
}

insitra_status insitra_config_set(insitra_config *cfg, const char *key, const char *value)
{
    if (!cfg || !key || !value)
        return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT,
                                 "config_set: %s is NULL", !cfg ? "cfg" : !key ? "key" : "value");
    const config_entry *e = find_entry(key);
    if (!e) return unknown_key_error(key);
    return set_entry(cfg, e, value);
}

insitra_status insitra_config_set_null(insitra_config *cfg, const char *key)
{
    const config_entry *e = find_entry(key);
    if (!e) return unknown_key_error(key);
    if (e->kind != KIND_STRING)
        return insitra_error_set(INSITRA_STATUS_CONFIG_ERROR,
                                 "config key '%s' has no value (a YAML null); only string keys may be "
                                 "null, which means \"\"",
                                 key);
    ((char *)cfg + e->offset)[0] = '\0';
    return INSITRA_STATUS_OK;
}

insitra_status insitra_config_check_section(const char *name)
{
    const size_t len = strlen(name);
    for (size_t i = 0; i < NUM_ENTRIES; i++)
        if (strncmp(entries[i].key, name, len) == 0 && entries[i].key[len] == '.') return INSITRA_STATUS_OK;
    if (find_entry(name))
        return insitra_error_set(INSITRA_STATUS_CONFIG_ERROR,
                                 "config key '%s' takes a value, not a mapping", name);
    char sections[256];
    return insitra_error_set(INSITRA_STATUS_CONFIG_ERROR, "unknown config section '%s' (sections: %s)",
                             name, section_list(sections, sizeof sections));
}

insitra_status insitra_config_get(const insitra_config *cfg, const char *key, char *buf,
                                  size_t buf_size)
{
    if (!cfg || !key || !buf || buf_size == 0)
        return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT,
                                 "config_get: NULL argument or empty buffer");
    const config_entry *e = find_entry(key);
    if (!e) return unknown_key_error(key);
    char text[INSITRA_CONFIG_PATH_MAX + 32];
    format_entry(cfg, e, text, sizeof text);
    if (strlen(text) >= buf_size)
        return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT,
                                 "config_get: value of '%s' needs %zu bytes, buffer has %zu", key,
                                 strlen(text) + 1, buf_size);
    strcpy(buf, text);
    return INSITRA_STATUS_OK;
}

void insitra_config_for_each(const insitra_config *cfg,
                             void (*fn)(const char *key, const char *value, void *ctx), void *ctx)
{
    char text[INSITRA_CONFIG_PATH_MAX + 32];
    for (size_t i = 0; i < NUM_ENTRIES; i++) {
        format_entry(cfg, &entries[i], text, sizeof text);
        fn(entries[i].key, text, ctx);
    }
}

int64_t insitra_config_bucket_floats(const insitra_config *cfg)
{
    return (int64_t)(cfg->parallel.bucket_mib * 1048576.0 / (double)sizeof(float));
}

int64_t insitra_config_held_out_capacity(const insitra_config *cfg)
{
    const double f = cfg->data.validation_fraction;
    return f > 0 ? (int64_t)ceil((double)cfg->data.capacity * f) : 0;
}

int64_t insitra_config_micro_batch(const insitra_config *cfg)
{
    return cfg->training.micro_batch_size > 0 ? cfg->training.micro_batch_size
                                              : cfg->training.batch_size;
}

insitra_status insitra_config_validate(const insitra_config *cfg)
{
    if (!cfg) return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT, "config_validate: cfg is NULL");
    const int64_t C = cfg->model.d_model, H = cfg->model.n_heads;
    if (C % H != 0)
        return insitra_error_set(INSITRA_STATUS_CONFIG_ERROR,
                                 "config key 'model.n_heads': value %" PRId64
                                 " does not divide model.d_model = %" PRId64,
                                 H, C);
    const int64_t B = cfg->training.batch_size, mb = insitra_config_micro_batch(cfg);
    if (mb > B || B % mb != 0)
        return insitra_error_set(INSITRA_STATUS_CONFIG_ERROR,
                                 "config key 'training.micro_batch_size': value %" PRId64
                                 " must divide training.batch_size = %" PRId64,
                                 mb, B);
    if (cfg->optimizer.min_lr > cfg->optimizer.lr)
        return insitra_error_set(INSITRA_STATUS_CONFIG_ERROR,
                                 "config key 'optimizer.min_lr': value %g exceeds optimizer.lr = %g",
                                 cfg->optimizer.min_lr, cfg->optimizer.lr);
    const bool needs_dir = cfg->checkpoint.every_steps > 0 || cfg->checkpoint.deadline_seconds > 0 ||
                           cfg->checkpoint.deadline_env[0] != '\0';
    if (needs_dir && cfg->checkpoint.dir[0] == '\0')
        return insitra_error_set(INSITRA_STATUS_CONFIG_ERROR,
                                 "config key 'checkpoint.dir' is empty, but checkpoint.every_steps or a "
                                 "checkpoint deadline asks for checkpoints");
    if (cfg->precision == INSITRA_PRECISION_BF16 && cfg->device != INSITRA_DEVICE_CUDA)
        return insitra_error_set(INSITRA_STATUS_CONFIG_ERROR,
                                 "config key 'precision': bf16 is for device = cuda; the CPU backend "
                                 "computes in fp32 (set precision = fp32 or device = cuda)");
    if (cfg->optimizer.warmup_steps > cfg->optimizer.decay_steps)
        return insitra_error_set(INSITRA_STATUS_CONFIG_ERROR,
                                 "config key 'optimizer.warmup_steps': value %" PRId64
                                 " exceeds optimizer.decay_steps = %" PRId64,
                                 cfg->optimizer.warmup_steps, cfg->optimizer.decay_steps);
    if (cfg->data.normalize == INSITRA_NORMALIZE_FROZEN && cfg->data.normalize_samples == 0 &&
        cfg->data.normalize_steps == 0)
        return insitra_error_set(INSITRA_STATUS_CONFIG_ERROR,
                                 "config key 'data.normalize': frozen needs data.normalize_samples or "
                                 "data.normalize_steps above 0 (when to freeze); use running to never freeze");
    if (cfg->model.seq_len % cfg->parallel.cp != 0)
        return insitra_error_set(INSITRA_STATUS_CONFIG_ERROR,
                                 "config key 'parallel.cp': value %" PRId64
                                 " does not divide model.seq_len = %" PRId64
                                 " (each of the cp ranks holds seq_len / cp tokens of every sample)",
                                 cfg->parallel.cp, cfg->model.seq_len);
    if (cfg->model.n_heads % cfg->parallel.tp != 0)
        return insitra_error_set(INSITRA_STATUS_CONFIG_ERROR,
                                 "config key 'parallel.tp': value %" PRId64 " does not divide model.n_heads = %" PRId64
                                 " (each of the tp ranks computes n_heads / tp heads)",
                                 cfg->parallel.tp, cfg->model.n_heads);
    if (4 * cfg->model.d_model % cfg->parallel.tp != 0)
        return insitra_error_set(INSITRA_STATUS_CONFIG_ERROR,
                                 "config key 'parallel.tp': value %" PRId64 " does not divide the MLP's width "
                                 "4 x model.d_model = %" PRId64 " (each of the tp ranks holds a 1/tp of it)",
                                 cfg->parallel.tp, 4 * cfg->model.d_model);
    if (cfg->model.seq_len % (cfg->parallel.cp * cfg->parallel.tp) != 0)
        return insitra_error_set(INSITRA_STATUS_CONFIG_ERROR,
                                 "config keys 'parallel.cp' x 'parallel.tp' = %" PRId64 " x %" PRId64
                                 " do not divide model.seq_len = %" PRId64 " (each of the cp x tp ranks "
                                 "holds seq_len / (cp tp) tokens of every sample)",
                                 cfg->parallel.cp, cfg->parallel.tp, cfg->model.seq_len);
    INSITRA_CHECK(insitra_residual_map_parse(cfg, NULL));
    return insitra_config_check_sizes(cfg);
}

insitra_model_dims insitra_config_model_dims(const insitra_config *cfg)
{
    return (insitra_model_dims){
        .seq_len = cfg->model.seq_len,
        .in_features = cfg->model.in_features,
        .out_features = cfg->model.out_features,
        .d_model = cfg->model.d_model,
        .n_layers = cfg->model.n_layers,
        .n_heads = cfg->model.n_heads,
        .causal = cfg->model.causal,
        .recompute = cfg->training.recompute == INSITRA_RECOMPUTE_BLOCK,
        .cp = 1,
        .tp = 1,
    };
}

/* One character of a string value for a double-quoted YAML scalar, so that
 * every value a YAML file can hold reads back the same: quotes and
 * backslashes escaped, characters YAML does not allow in a stream or reads
 * as line breaks (control characters, C1 controls, U+2028/2029, U+FFFE/FFFF)
 * as \xNN or \uNNNN, the
 * rest (valid UTF-8) as is. A byte that starts no valid UTF-8 sequence (only
 * insitra_config_set can store one) becomes \xNN, which reads back as
 * U+00NN: such a value survives the dump as text, not byte for byte.
 * Returns the bytes of c consumed; out holds at most 15 characters. */
static size_t yaml_escape(const unsigned char *c, char *out)
{
    const size_t len = 16;
    if (*c == '"' || *c == '\\') {
        snprintf(out, len, "\\%c", *c);
        return 1;
    }
    if (*c == '\n' || *c == '\t') {
        snprintf(out, len, "\\%c", *c == '\n' ? 'n' : 't');
        return 1;
    }
    if (*c < 0x20 || *c == 0x7f) {
        snprintf(out, len, "\\x%02x", *c);
        return 1;
    }
    if (*c < 0x80) {
        snprintf(out, len, "%c", *c);
        return 1;
    }
    /* a UTF-8 sequence: its length, and the code point it encodes */
    const size_t n = *c >= 0xf0 && *c < 0xf5 ? 4 : *c >= 0xe0 && *c < 0xf0 ? 3 : *c >= 0xc2 && *c < 0xe0 ? 2 : 0;
    uint32_t cp = n == 4 ? *c & 0x07u : n == 3 ? *c & 0x0fu : *c & 0x1fu;
    bool valid = n > 0;
    for (size_t k = 1; valid && k < n; k++) {
        valid = (c[k] & 0xc0) == 0x80;
        cp = cp << 6 | (c[k] & 0x3fu);
    }
    valid = valid && !(n == 3 && cp < 0x800) && !(n == 4 && (cp < 0x10000 || cp > 0x10ffff)) &&
            !(cp >= 0xd800 && cp <= 0xdfff);
    if (!valid) {
        snprintf(out, len, "\\x%02x", *c);
        return 1;
    }
    /* YAML reads U+0085, U+2028 and U+2029 as line breaks and folds them */
    const bool printable = ((cp >= 0xa0 && cp <= 0xd7ff && cp != 0x2028 && cp != 0x2029) ||
                            (cp >= 0xe000 && cp <= 0xfffd) || cp >= 0x10000);
    if (printable) {
        memcpy(out, c, n);
        out[n] = '\0';
    } else {
        snprintf(out, len, "\\u%04x", (unsigned)cp);
    }
    return n;
}

size_t insitra_config_dump_yaml(const insitra_config *cfg, char *buf, size_t len)
{
    char text[INSITRA_CONFIG_PATH_MAX + 32];
    size_t used = 0;
    const char *section = "";
    size_t section_len = 0;
#define EMIT(...)                                                                  \
    do {                                                                           \
        int n_ = snprintf(used < len ? buf + used : NULL, used < len ? len - used : 0, __VA_ARGS__); \
        used += n_ > 0 ? (size_t)n_ : 0;                                           \
    } while (0)
    for (size_t i = 0; i < NUM_ENTRIES; i++) {
        const config_entry *e = &entries[i];
        /* top-level keys (device, precision) come first in the table, then sections */
        const char *dot = strchr(e->key, '.');
        const size_t key_section = dot ? (size_t)(dot - e->key) : 0;
        if (key_section != section_len || strncmp(e->key, section, section_len) != 0) {
            section = e->key;
            section_len = key_section;
            EMIT("%.*s:\n", (int)section_len, section);
        }
        const char *name = dot ? dot + 1 : e->key, *indent = dot ? "  " : "";
        format_entry(cfg, e, text, sizeof text);
        if (e->kind == KIND_STRING) {
            EMIT("%s%s: \"", indent, name);
            for (const unsigned char *c = (const unsigned char *)text; *c;) {
                char esc[16];
                c += yaml_escape(c, esc);
                EMIT("%s", esc);
            }
            EMIT("\"\n");
        } else {
            EMIT("%s%s: %s\n", indent, name, text);
        }
    }
#undef EMIT
    return used;
}

int64_t insitra_config_token_slices(const insitra_config *cfg)
{
    return cfg->parallel.cp * cfg->parallel.tp;
}
