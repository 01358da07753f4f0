/*
 * YAML front end of the configuration: nested mappings of scalars become
 * dotted keys (model: {d_model: 256} is "model.d_model" = "256") and go
 * through insitra_config_set. Keys are applied to a copy, so a file that
 * fails halfway leaves the caller's configuration as it was.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <yaml.h>

#include "config.h"
#include "error.h"

#define KEY_MAX 256 /* a dotted key with its NUL: at most KEY_MAX - 1 characters */
#define DEPTH_MAX 8

/* A key already read, for refusing duplicates (YAML mapping keys are unique;
 * silently letting the last one win hides a mistake). */
typedef struct {
    char *name; /* dotted */
    size_t line;
} seen_key;

typedef struct {
    const char *source;   /* file name or "<string>" for messages */
    char path[KEY_MAX];   /* dotted name of the mapping being read; "" at the top */
    size_t path_len[DEPTH_MAX]; /* strlen(path) on entering each depth, to restore on leaving */
    int depth;            /* mappings entered; 0 = outside the top-level mapping */
    char key[KEY_MAX];    /* pending key (dotted), awaiting its value */
    yaml_mark_t key_mark; /* where that key stands, for messages */
    bool have_key;
    seen_key *seen;       /* every key read so far */
    size_t num_seen, max_seen;
} walk_state;

static insitra_status at_mark(const walk_state *w, const yaml_mark_t *mark, insitra_status s)
{
    return insitra_error_prefix(s, "%s:%zu:%zu: ", w->source, mark->line + 1, mark->column + 1);
}

/* The dotted name of key under the current mapping into w->key, length
 * checked before anything is copied. */
static insitra_status set_key(walk_state *w, const yaml_mark_t *mark, const char *key)
{
    const size_t len = strlen(key), path_len = strlen(w->path);
    const size_t full = path_len ? path_len + 1 + len : len;
    const char *more = len > 32 ? "..." : "";
    if (strchr(key, '.'))
        return at_mark(w, mark, insitra_error_set(INSITRA_STATUS_PARSE_ERROR,
                                                  "invalid key '%.32s%s': a key holds no '.'; nest "
                                                  "mappings instead (model: {d_model: 256})",
                                                  key, more));
    if (full >= KEY_MAX && path_len == 0)
        return at_mark(w, mark, insitra_error_set(INSITRA_STATUS_PARSE_ERROR,
                                                  "key '%.32s%s' of %zu characters is too long "
                                                  "(at most %d)",
                                                  key, more, len, KEY_MAX - 1));
    if (full >= KEY_MAX)
        return at_mark(w, mark, insitra_error_set(INSITRA_STATUS_PARSE_ERROR,
                                                  "key '%.32s%s' under '%.64s%s' is too long: with "
                                                  "its prefix it has %zu characters (at most %d)",
                                                  key, more, w->path, path_len > 64 ? "..." : "",
                                                  full, KEY_MAX - 1));
    char *out = w->key; /* full < KEY_MAX: both copies fit */
    if (path_len) {
        memcpy(out, w->path, path_len);
        out[path_len] = '.';
        out += path_len + 1;
    }
    memcpy(out, key, len + 1);
    w->key_mark = *mark;
    w->have_key = true;
    return INSITRA_STATUS_OK;
}

/* Records w->key, or names both lines if it was read before. */
static insitra_status remember_key(walk_state *w)
{
    for (size_t i = 0; i < w->num_seen; i++)
        if (strcmp(w->seen[i].name, w->key) == 0)
            return at_mark(w, &w->key_mark,
                           insitra_error_set(INSITRA_STATUS_PARSE_ERROR,
                                             "key '%s' appears twice, on lines %zu and %zu; each key "
                                             "may be given once",
                                             w->key, w->seen[i].line, w->key_mark.line + 1));
    if (w->num_seen == w->max_seen) {
        const size_t n = w->max_seen ? 2 * w->max_seen : 64;
        seen_key *grown = realloc(w->seen, n * sizeof *grown);
        if (!grown) return insitra_error_set(INSITRA_STATUS_OUT_OF_MEMORY, "config YAML: out of memory");
        w->seen = grown;
        w->max_seen = n;
    }
    char *name = malloc(strlen(w->key) + 1);
    if (!name) return insitra_error_set(INSITRA_STATUS_OUT_OF_MEMORY, "config YAML: out of memory");
    strcpy(name, w->key);
    w->seen[w->num_seen++] = (seen_key){name, w->key_mark.line + 1};
    return INSITRA_STATUS_OK;
}

/* YAML's null: ~, null, Null, NULL or nothing, unquoted and untagged, or
 * anything tagged !!null. */
static bool is_null(const yaml_event_t *ev)
{
    const char *tag = (const char *)ev->data.scalar.tag, *v = (const char *)ev->data.scalar.value;
    if (tag) return strcmp(tag, YAML_NULL_TAG) == 0;
    if (ev->data.scalar.style != YAML_PLAIN_SCALAR_STYLE) return false;
    return v[0] == '\0' || strcmp(v, "~") == 0 || strcmp(v, "null") == 0 || strcmp(v, "Null") == 0 ||
           strcmp(v, "NULL") == 0;
}

/* A value for the pending key. A null is "" for a string key, nothing for a
 * section (all its keys left out), and an error for any other key. */
static insitra_status apply_value(walk_state *w, insitra_config *cfg, const yaml_event_t *ev)
{
    w->have_key = false;
    if (is_null(ev)) {
        if (insitra_config_check_section(w->key) == INSITRA_STATUS_OK) return INSITRA_STATUS_OK;
        insitra_status s = insitra_config_set_null(cfg, w->key);
        return s == INSITRA_STATUS_OK ? s : at_mark(w, &w->key_mark, s);
    }
    /* An unknown key is reported where the key stands, a bad value where the value does. */
    insitra_status s = insitra_config_set(cfg, w->key, (const char *)ev->data.scalar.value);
    if (s == INSITRA_STATUS_OK) return s;
    return at_mark(w, strstr(insitra_last_error(), "unknown config key") ? &w->key_mark : &ev->start_mark, s);
}

static insitra_status enter_mapping(walk_state *w, const yaml_mark_t *mark)
{
    if (w->depth > 0 && !w->have_key)
        return at_mark(w, mark, insitra_error_set(INSITRA_STATUS_PARSE_ERROR, "a mapping cannot be a key"));
    if (w->depth >= DEPTH_MAX)
        return at_mark(w, mark, insitra_error_set(INSITRA_STATUS_PARSE_ERROR,
                                                  "mappings nested deeper than %d", DEPTH_MAX));
    w->path_len[w->depth] = strlen(w->path);
    if (w->depth > 0) {
        insitra_status s = insitra_config_check_section(w->key);
        if (s != INSITRA_STATUS_OK) return at_mark(w, &w->key_mark, s);
        strcpy(w->path, w->key); /* both KEY_MAX */
    }
    w->depth++;
    w->have_key = false;
    return INSITRA_STATUS_OK;
}

static insitra_status on_event(walk_state *w, insitra_config *cfg, const yaml_event_t *ev)
{
    const yaml_mark_t *mark = &ev->start_mark;
    switch (ev->type) {
    case YAML_STREAM_START_EVENT:
    case YAML_STREAM_END_EVENT:
    case YAML_DOCUMENT_START_EVENT:
    case YAML_DOCUMENT_END_EVENT:
    case YAML_NO_EVENT:
        return INSITRA_STATUS_OK;
    case YAML_MAPPING_START_EVENT:
        return enter_mapping(w, mark);
    case YAML_MAPPING_END_EVENT:
        w->depth--;
        w->path[w->path_len[w->depth]] = '\0';
        return INSITRA_STATUS_OK;
    case YAML_SCALAR_EVENT: {
        const char *text = (const char *)ev->data.scalar.value;
        if (w->depth == 0) {
            /* An empty document parses as one empty plain scalar: nothing to apply. */
            if (text[0] == '\0' && ev->data.scalar.plain_implicit) return INSITRA_STATUS_OK;
            return at_mark(w, mark, insitra_error_set(INSITRA_STATUS_PARSE_ERROR,
                                                      "expected a mapping of keys, found '%.64s'",
                                                      text));
        }
        if (w->have_key) return apply_value(w, cfg, ev);
        INSITRA_CHECK(set_key(w, mark, text));
        return remember_key(w);
    }
    case YAML_SEQUENCE_START_EVENT:
    case YAML_SEQUENCE_END_EVENT:
        return at_mark(w, mark, insitra_error_set(INSITRA_STATUS_PARSE_ERROR,
                                                  "lists are not valid configuration values"));
    case YAML_ALIAS_EVENT:
        return at_mark(w, mark, insitra_error_set(INSITRA_STATUS_PARSE_ERROR,
                                                  "aliases are not supported"));
    }
    return INSITRA_STATUS_OK;
}

/* Runs the parser over an initialised yaml_parser_t into a copy of cfg. */
static insitra_status load(yaml_parser_t *parser, insitra_config *cfg, const char *source)
{
    insitra_config staged = *cfg;
    walk_state w = {.source = source};
    insitra_status status = INSITRA_STATUS_OK;
    for (;;) {
        yaml_event_t ev;
        if (!yaml_parser_parse(parser, &ev)) {
            const yaml_mark_t *m = &parser->problem_mark;
            status = insitra_error_set(INSITRA_STATUS_PARSE_ERROR, "%s:%zu:%zu: malformed YAML: %s%s%s",
                                       source, m->line + 1, m->column + 1,
                                       parser->problem ? parser->problem : "unknown problem",
                                       parser->context ? " " : "",
                                       parser->context ? parser->context : "");
            break;
        }
        status = on_event(&w, &staged, &ev);
        bool done = ev.type == YAML_STREAM_END_EVENT;
        yaml_event_delete(&ev);
        if (status != INSITRA_STATUS_OK || done) break;
    }
    for (size_t i = 0; i < w.num_seen; i++) free(w.seen[i].name);
    free(w.seen);
    if (status == INSITRA_STATUS_OK) *cfg = staged;
    return status;
}

insitra_status insitra_config_load_yaml(insitra_config *cfg, const char *path)
{
    if (!cfg || !path)
        return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT, "config_load_yaml: %s is NULL",
                                 !cfg ? "cfg" : "path");
    FILE *f = fopen(path, "rb");
    if (!f)
        return insitra_error_set(INSITRA_STATUS_IO_ERROR, "cannot open config file '%s': %s", path,
                                 strerror(errno));
    /* fopen opens a directory for reading; only the first read fails, which
     * libyaml reports as a bare "input error". */
    struct stat st;
    if (fstat(fileno(f), &st) == 0 && S_ISDIR(st.st_mode)) {
        fclose(f);
        return insitra_error_set(INSITRA_STATUS_IO_ERROR,
                                 "cannot read config file '%s': it is a directory", path);
    }
    yaml_parser_t parser;
    if (!yaml_parser_initialize(&parser)) {
        fclose(f);
        return insitra_error_set(INSITRA_STATUS_OUT_OF_MEMORY, "cannot create a YAML parser");
    }
    yaml_parser_set_input_file(&parser, f);
    insitra_status s = load(&parser, cfg, path);
    yaml_parser_delete(&parser);
    fclose(f);
    return s;
}

insitra_status insitra_config_load_yaml_string(insitra_config *cfg, const char *yaml)
{
    if (!cfg || !yaml)
        return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT,
                                 "config_load_yaml_string: %s is NULL", !cfg ? "cfg" : "yaml");
    yaml_parser_t parser;
    if (!yaml_parser_initialize(&parser))
        return insitra_error_set(INSITRA_STATUS_OUT_OF_MEMORY, "cannot create a YAML parser");
    yaml_parser_set_input_string(&parser, (const unsigned char *)yaml, strlen(yaml));
    insitra_status s = load(&parser, cfg, "<string>");
    yaml_parser_delete(&parser);
    return s;
}
