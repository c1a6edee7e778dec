/* Internal to the config module: a YAML document as a plain tree with the
 * position of every node, built from libyaml's event stream. Aliases are
 * expanded into copies (so every node has one owner), merge keys (`<<:`) are
 * applied, duplicate keys are errors. The tree is what `--set` edits before the
 * schema (config_schema.c) turns it into a ct_run_config.
 *
 * Ownership: ct_ydoc owns every node and the origin strings they point at
 * (ct_ydoc_free). Nodes handed to ct_ydoc_set become the document's. */
#ifndef CT_CONFIG_YAML_H
#define CT_CONFIG_YAML_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum { CT_Y_SCALAR, CT_Y_SEQ, CT_Y_MAP } ct_ykind;

struct ct_ynode;
typedef struct {
    struct ct_ynode *key; /* always a scalar */
    struct ct_ynode *val;
} ct_ypair;

typedef struct ct_ynode {
    ct_ykind kind;
    const char *origin; /* file name or "--set a=b" (owned by the ct_ydoc) */
    int line, col;      /* 1-based; 0 when the node has no position */
    /* scalar */
    char *str;
    size_t len;
    bool plain;      /* unquoted (and untagged): subject to null/bool/number resolution */
    /* seq: items; map: pairs */
    struct ct_ynode **items;
    ct_ypair *pairs;
    size_t n, cap;
} ct_ynode;

typedef struct ct_ydoc {
    ct_ynode *root;       /* NULL for an empty document */
    char **origins;
    size_t n_origins;
    size_t n_nodes;       /* nodes created, bounded against alias bombs */
} ct_ydoc;

/* What a plain scalar resolves to (YAML 1.2 core schema); quoted scalars and
 * `!!str` are strings. */
typedef enum { CT_YS_NULL, CT_YS_BOOL, CT_YS_INT, CT_YS_FLOAT, CT_YS_STR } ct_yscalar;
ct_yscalar ct_yscalar_type(const ct_ynode *n);

/* Parses one YAML document (an empty text gives root NULL) into doc->root.
 * Syntax errors are CT_EINPUT "origin:line:column: ...". When `doc` already
 * holds a tree, the new root replaces nothing: use a fresh doc per text. */
int ct_ydoc_load(ct_ydoc *doc, const char *text, size_t len, const char *origin);

/* Parses `text` as a standalone YAML value (a `--set` value) into a node that
 * the caller owns (ct_ynode_free). Its nodes carry no position: messages name
 * `origin` (the whole argument). An empty text is a null scalar. */
int ct_ydoc_parse_value(ct_ydoc *doc, const char *text, const char *origin, ct_ynode **out);

/* An origin string owned by the doc. NULL when out of memory. */
const char *ct_ydoc_origin(ct_ydoc *doc, const char *origin);

/* New empty mapping owned by the doc. */
ct_ynode *ct_ydoc_new_map(ct_ydoc *doc, const char *origin);
/* Appends (key, val) to map m (key copied into a new scalar node). */
int ct_ymap_append(ct_ydoc *doc, ct_ynode *m, const char *key, ct_ynode *val);
/* The value of `key` in map m, or NULL; *pair_index gets its index when found. */
ct_ynode *ct_ymap_get(const ct_ynode *m, const char *key, size_t *pair_index);

void ct_ynode_free(ct_ynode *n);
void ct_ydoc_free(ct_ydoc *doc);

/* "s" of a scalar for messages: at most 40 bytes, with an ellipsis. */
void ct_yscalar_preview(const ct_ynode *n, char *buf, size_t cap);

#endif
