/*
 * YAML front end of the configuration: nested mappings of scalars become
 * dotted keys (model: {d_model: 256} is "model.d_model" = "256") and go
 * through insitra_config_set. Keys are applied to a copy, so a file that
 * fails halfway leaves the caller's configuration as it was.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <yaml.h>

#include "config.h"
#include "error.h"

#define KEY_MAX 256
#define DEPTH_MAX 8

typedef struct {
    const char *source; /* file name or "<string>" for messages */
    char prefix[DEPTH_MAX][KEY_MAX];
    int depth;          /* mappings entered; 0 = outside the top-level mapping */
    char key[KEY_MAX];  /* pending key, awaiting its value */
    yaml_mark_t key_mark; /* where that key stands, for messages */
    bool have_key;
} walk_state;

static insitra_status at_mark(const walk_state *w, const yaml_mark_t *mark, insitra_status s)
{
    return insitra_error_prefix(s, "%s:%zu:%zu: ", w->source, mark->line + 1, mark->column + 1);
}

static insitra_status dotted_key(const walk_state *w, const yaml_mark_t *mark, char *out)
{
    out[0] = '\0';
    for (int i = 0; i < w->depth - 1; i++) {
        strcat(out, w->prefix[i]);
        strcat(out, ".");
    }
    if (strlen(out) + strlen(w->key) >= KEY_MAX)
        return at_mark(w, mark, insitra_error_set(INSITRA_STATUS_PARSE_ERROR, "key is too long"));
    strcat(out, w->key);
    return INSITRA_STATUS_OK;
}

static insitra_status on_event(walk_state *w, insitra_config *cfg, const yaml_event_t *ev)
{
    const yaml_mark_t *mark = &ev->start_mark;
    char full[KEY_MAX];
    switch (ev->type) {
    case YAML_STREAM_START_EVENT:
    case YAML_STREAM_END_EVENT:
    case YAML_DOCUMENT_START_EVENT:
    case YAML_DOCUMENT_END_EVENT:
    case YAML_NO_EVENT:
        return INSITRA_STATUS_OK;
    case YAML_MAPPING_START_EVENT:
        if (w->depth > 0 && !w->have_key)
            return at_mark(w, mark, insitra_error_set(INSITRA_STATUS_PARSE_ERROR,
                                                      "a mapping cannot be a key"));
        if (w->depth >= DEPTH_MAX)
            return at_mark(w, mark, insitra_error_set(INSITRA_STATUS_PARSE_ERROR,
                                                      "mappings nested deeper than %d", DEPTH_MAX));
        if (w->depth > 0) strcpy(w->prefix[w->depth - 1], w->key);
        w->depth++;
        w->have_key = false;
        return INSITRA_STATUS_OK;
    case YAML_MAPPING_END_EVENT:
        w->depth--;
        return INSITRA_STATUS_OK;
    case YAML_SCALAR_EVENT: {
        const char *text = (const char *)ev->data.scalar.value;
        if (w->depth == 0) {
            /* An empty document parses as one empty plain scalar: nothing to apply. */
            if (text[0] == '\0' && ev->data.scalar.plain_implicit) return INSITRA_STATUS_OK;
            return at_mark(w, mark, insitra_error_set(INSITRA_STATUS_PARSE_ERROR,
                                                      "expected a mapping of keys, found '%s'",
                                                      text));
        }
        if (!w->have_key) {
            if (strlen(text) >= KEY_MAX || strchr(text, '.'))
                return at_mark(w, mark, insitra_error_set(INSITRA_STATUS_PARSE_ERROR,
                                                          "invalid key '%s'", text));
            strcpy(w->key, text);
            w->key_mark = *mark;
            w->have_key = true;
            return INSITRA_STATUS_OK;
        }
        INSITRA_CHECK(dotted_key(w, mark, full));
        w->have_key = false;
        if (text[0] == '\0' && ev->data.scalar.plain_implicit)
            return at_mark(w, &w->key_mark, insitra_error_set(INSITRA_STATUS_CONFIG_ERROR,
                                                              "config key '%s' has no value", full));
        /* An unknown key is reported where the key stands, a bad value where the value does. */
        insitra_status s = insitra_config_set(cfg, full, text);
        if (s == INSITRA_STATUS_OK) return s;
        return at_mark(w, strstr(insitra_last_error(), "unknown config key") ? &w->key_mark : mark, s);
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
