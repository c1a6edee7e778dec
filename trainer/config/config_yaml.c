/* YAML text -> position-carrying tree (config_yaml.h), from libyaml's event
 * parser. The event API rather than libyaml's document API because it keeps
 * the position of every alias (an error in an aliased value points at the use)
 * and because merge keys and duplicate keys need our own handling anyway. */
#include "trainer/config/config_yaml.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <yaml.h>

#include "autograd/ct_error.h"

#define MAX_DEPTH 64
#define MAX_NODES 200000 /* bounds alias expansion ("billion laughs") */

#define TAG_PREFIX "tag:yaml.org,2002:"

static int oom(void) { return ct_errorf(CT_ERUNTIME, "out of memory parsing YAML"); }

/* CT_EINPUT "origin:line:col: message" ("origin: message" for a node without a position). */
static int yerr(const char *origin, int line, int col, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static int yerr(const char *origin, int line, int col, const char *fmt, ...) {
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (line > 0) return ct_errorf(CT_EINPUT, "%s:%d:%d: %s", origin, line, col, msg);
    return ct_errorf(CT_EINPUT, "%s: %s", origin, msg);
}

const char *ct_ydoc_origin(ct_ydoc *doc, const char *origin) {
    for (size_t i = 0; i < doc->n_origins; i++)
        if (strcmp(doc->origins[i], origin) == 0) return doc->origins[i];
    char **no = realloc(doc->origins, (doc->n_origins + 1) * sizeof *no);
    if (!no) return NULL;
    doc->origins = no;
    if (!(no[doc->n_origins] = strdup(origin))) return NULL;
    return no[doc->n_origins++];
}

static ct_ynode *new_node(ct_ydoc *doc, ct_ykind kind, const char *origin, int line, int col) {
    if (doc->n_nodes >= MAX_NODES) {
        yerr(origin, line, col, "the document expands to more than %d nodes (aliases nested too deeply?)", MAX_NODES);
        return NULL;
    }
    ct_ynode *n = calloc(1, sizeof *n);
    if (!n) {
        oom();
        return NULL;
    }
    n->kind = kind;
    n->origin = origin;
    n->line = line;
    n->col = col;
    doc->n_nodes++;
    return n;
}

void ct_ynode_free(ct_ynode *n) {
    if (!n) return;
    for (size_t i = 0; i < n->n; i++) {
        if (n->kind == CT_Y_SEQ) ct_ynode_free(n->items[i]);
        if (n->kind == CT_Y_MAP) {
            ct_ynode_free(n->pairs[i].key);
            ct_ynode_free(n->pairs[i].val);
        }
    }
    free(n->items);
    free(n->pairs);
    free(n->str);
    free(n);
}

void ct_ydoc_free(ct_ydoc *doc) {
    ct_ynode_free(doc->root);
    for (size_t i = 0; i < doc->n_origins; i++) free(doc->origins[i]);
    free(doc->origins);
    memset(doc, 0, sizeof *doc);
}

static int grow(ct_ynode *n) {
    if (n->n < n->cap) return CT_OK;
    size_t cap = n->cap ? n->cap * 2 : 8;
    if (n->kind == CT_Y_SEQ) {
        ct_ynode **p = realloc(n->items, cap * sizeof *p);
        if (!p) return oom();
        n->items = p;
    } else {
        ct_ypair *p = realloc(n->pairs, cap * sizeof *p);
        if (!p) return oom();
        n->pairs = p;
    }
    n->cap = cap;
    return CT_OK;
}

static ct_ynode *new_scalar(ct_ydoc *doc, const char *s, size_t len, bool plain, const char *origin, int line,
                            int col) {
    ct_ynode *n = new_node(doc, CT_Y_SCALAR, origin, line, col);
    if (!n) return NULL;
    n->str = malloc(len + 1);
    if (!n->str) {
        free(n);
        oom();
        return NULL;
    }
    memcpy(n->str, s, len);
    n->str[len] = '\0';
    n->len = len;
    n->plain = plain;
    return n;
}

ct_ynode *ct_ydoc_new_map(ct_ydoc *doc, const char *origin) { return new_node(doc, CT_Y_MAP, origin, 0, 0); }

ct_ynode *ct_ymap_get(const ct_ynode *m, const char *key, size_t *pair_index) {
    if (!m || m->kind != CT_Y_MAP) return NULL;
    for (size_t i = 0; i < m->n; i++)
        if (strcmp(m->pairs[i].key->str, key) == 0) {
            if (pair_index) *pair_index = i;
            return m->pairs[i].val;
        }
    return NULL;
}

int ct_ymap_append(ct_ydoc *doc, ct_ynode *m, const char *key, ct_ynode *val) {
    ct_ynode *k = new_scalar(doc, key, strlen(key), true, val->origin, val->line, val->col);
    if (!k) return ct_last_status();
    if (grow(m)) {
        ct_ynode_free(k);
        return CT_ERUNTIME;
    }
    m->pairs[m->n].key = k;
    m->pairs[m->n].val = val;
    m->n++;
    return CT_OK;
}

/* A deep copy of `src` whose root takes the position of the alias that asked for it. */
static ct_ynode *copy_tree(ct_ydoc *doc, const ct_ynode *src, int line, int col, const char *origin) {
    ct_ynode *n = src->kind == CT_Y_SCALAR ? new_scalar(doc, src->str, src->len, src->plain, origin, line, col)
                                            : new_node(doc, src->kind, origin, line, col);
    if (!n) return NULL;
    for (size_t i = 0; i < src->n; i++) {
        if (grow(n)) goto fail;
        if (src->kind == CT_Y_SEQ) {
            const ct_ynode *s = src->items[i];
            if (!(n->items[n->n] = copy_tree(doc, s, s->line, s->col, s->origin))) goto fail;
        } else {
            const ct_ypair *p = &src->pairs[i];
            n->pairs[n->n].key = copy_tree(doc, p->key, p->key->line, p->key->col, p->key->origin);
            n->pairs[n->n].val = n->pairs[n->n].key ? copy_tree(doc, p->val, p->val->line, p->val->col, p->val->origin)
                                                    : NULL;
            if (!n->pairs[n->n].val) {
                ct_ynode_free(n->pairs[n->n].key);
                goto fail;
            }
        }
        n->n++;
    }
    return n;
fail:
    ct_ynode_free(n);
    return NULL;
}

/* ---- scalar resolution (YAML 1.2 core schema) ---- */

static bool all_in(const char *s, const char *set) {
    if (!*s) return false;
    for (; *s; s++)
        if (!strchr(set, *s)) return false;
    return true;
}

static bool is_float_text(const char *s) {
    if (*s == '+' || *s == '-') s++;
    if (!strcmp(s, ".inf") || !strcmp(s, ".Inf") || !strcmp(s, ".INF")) return true;
    const char *p = s;
    size_t digits = 0;
    while (*p >= '0' && *p <= '9') p++, digits++;
    if (*p == '.') {
        p++;
        while (*p >= '0' && *p <= '9') p++, digits++;
    }
    if (!digits) return false;
    if (*p == 'e' || *p == 'E') {
        p++;
        if (*p == '+' || *p == '-') p++;
        if (!(*p >= '0' && *p <= '9')) return false;
        while (*p >= '0' && *p <= '9') p++;
    }
    return *p == '\0';
}

ct_yscalar ct_yscalar_type(const ct_ynode *n) {
    if (n->kind != CT_Y_SCALAR || !n->plain) return CT_YS_STR;
    const char *s = n->str;
    if (!*s || !strcmp(s, "~") || !strcmp(s, "null") || !strcmp(s, "Null") || !strcmp(s, "NULL")) return CT_YS_NULL;
    if (!strcmp(s, "true") || !strcmp(s, "True") || !strcmp(s, "TRUE") || !strcmp(s, "false") ||
        !strcmp(s, "False") || !strcmp(s, "FALSE"))
        return CT_YS_BOOL;
    const char *d = (*s == '+' || *s == '-') ? s + 1 : s;
    if (all_in(d, "0123456789")) return CT_YS_INT;
    if (s[0] == '0' && s[1] == 'x' && all_in(s + 2, "0123456789abcdefABCDEF")) return CT_YS_INT;
    if (s[0] == '0' && s[1] == 'o' && all_in(s + 2, "01234567")) return CT_YS_INT;
    if (!strcmp(s, ".nan") || !strcmp(s, ".NaN") || !strcmp(s, ".NAN") || is_float_text(s)) return CT_YS_FLOAT;
    return CT_YS_STR;
}

void ct_yscalar_preview(const ct_ynode *n, char *buf, size_t cap) {
    if (n->kind != CT_Y_SCALAR) {
        snprintf(buf, cap, "%s", n->kind == CT_Y_SEQ ? "a list" : "a mapping");
        return;
    }
    size_t k = n->len;
    if (k > 40) {
        k = 40;
        while (k > 0 && ((unsigned char)n->str[k] & 0xC0) == 0x80) k--; /* whole UTF-8 characters */
    }
    snprintf(buf, cap, "'%.*s%s'", (int)k, n->str, k < n->len ? "..." : "");
}

/* ---- the event-driven builder ---- */

typedef struct {
    char *name;
    ct_ynode *node;
    bool complete; /* an alias to an unfinished (enclosing) node would be recursive */
} anchor;

typedef struct {
    ct_ydoc *doc;
    const char *origin;
    bool nopos;
    ct_ynode *stack[MAX_DEPTH];
    ct_ynode *pending_key[MAX_DEPTH]; /* for maps: the key waiting for its value */
    int depth;
    anchor *anchors;
    size_t n_anchors;
    ct_ynode **graveyard; /* merge sources: anchors may still point at them */
    size_t n_graveyard;
    ct_ynode *root;
} builder;

/* Positions of nodes; 0 for `--set` values, whose messages name the argument instead. */
static int pos_line(const builder *b, const yaml_mark_t *m) { return b->nopos ? 0 : (int)m->line + 1; }
static int pos_col(const builder *b, const yaml_mark_t *m) { return b->nopos ? 0 : (int)m->column + 1; }


static int add_anchor(builder *b, const unsigned char *name, ct_ynode *n) {
    anchor *na = realloc(b->anchors, (b->n_anchors + 1) * sizeof *na);
    if (!na) return oom();
    b->anchors = na;
    /* a later anchor of the same name shadows the earlier one (YAML), so search from the end */
    if (!(na[b->n_anchors].name = strdup((const char *)name))) return oom();
    na[b->n_anchors].node = n;
    na[b->n_anchors].complete = n->kind == CT_Y_SCALAR;
    b->n_anchors++;
    return CT_OK;
}

static void complete_anchor(builder *b, const ct_ynode *n) {
    for (size_t i = 0; i < b->n_anchors; i++)
        if (b->anchors[i].node == n) b->anchors[i].complete = true;
}

static bool same_key(const ct_ynode *a, const ct_ynode *b) {
    return a->len == b->len && !memcmp(a->str, b->str, a->len);
}

static bool is_merge_key(const ct_ynode *k) { return k->plain && !strcmp(k->str, "<<"); }

/* Applies `<<:` pairs of map m (explicit keys win, earlier merge sources win
 * over later ones) and rejects duplicate explicit keys. Merged pairs are
 * copies: a merge source may carry an anchor used again later, so the source
 * nodes go to the graveyard (freed with the builder) instead of being freed. */
static int bury(builder *b, ct_ynode *n) {
    ct_ynode **g = realloc(b->graveyard, (b->n_graveyard + 1) * sizeof *g);
    if (!g) {
        ct_ynode_free(n);
        return oom();
    }
    b->graveyard = g;
    g[b->n_graveyard++] = n;
    return CT_OK;
}

static int finish_map(builder *b, ct_ynode *m) {
    size_t kept = 0, n = m->n;
    int rc = CT_OK;
    for (size_t i = 0; i < n; i++) { /* explicit pairs first, merge pairs moved behind them */
        if (is_merge_key(m->pairs[i].key)) continue;
        ct_ypair p = m->pairs[i];
        memmove(&m->pairs[kept + 1], &m->pairs[kept], (i - kept) * sizeof p);
        m->pairs[kept++] = p;
    }
    size_t first_merge = kept;
    for (size_t i = 0; i < kept && !rc; i++)
        for (size_t j = 0; j < i; j++)
            if (same_key(m->pairs[i].key, m->pairs[j].key)) {
                const ct_ynode *k = m->pairs[i].key, *f = m->pairs[j].key;
                rc = f->line > 0 ? yerr(k->origin, k->line, k->col,
                                        "duplicate key '%s' (first given at line %d, column %d); keep one", k->str,
                                        f->line, f->col)
                                 : yerr(k->origin, 0, 0, "duplicate key '%s'; keep one", k->str);
                break;
            }
    /* detach the merge pairs: the map holds only explicit pairs from here on */
    size_t n_merges = n - first_merge;
    ct_ypair *merges = n_merges ? malloc(n_merges * sizeof *merges) : NULL;
    if (n_merges && !merges) {
        for (size_t i = first_merge; i < n; i++) ct_ynode_free(m->pairs[i].key), ct_ynode_free(m->pairs[i].val);
        m->n = kept;
        return oom();
    }
    if (n_merges) memcpy(merges, &m->pairs[first_merge], n_merges * sizeof *merges);
    m->n = kept;
    for (size_t i = 0; i < n_merges && !rc; i++) {
        ct_ynode *v = merges[i].val;
        ct_ynode *const *srcs = v->kind == CT_Y_SEQ ? v->items : &v;
        size_t n_srcs = v->kind == CT_Y_SEQ ? v->n : 1;
        for (size_t s = 0; s < n_srcs && !rc; s++) {
            const ct_ynode *src = srcs[s];
            if (src->kind != CT_Y_MAP) {
                rc = yerr(src->origin, src->line, src->col,
                          "a merge key '<<' takes a mapping or a list of mappings (usually an alias like *defaults)");
                break;
            }
            for (size_t j = 0; j < src->n && !rc; j++) {
                const ct_ypair *sp = &src->pairs[j];
                bool present = false;
                for (size_t k = 0; k < m->n && !present; k++) present = same_key(m->pairs[k].key, sp->key);
                if (present) continue;
                if (grow(m)) {
                    rc = CT_ERUNTIME;
                    break;
                }
                ct_ynode *k = copy_tree(b->doc, sp->key, sp->key->line, sp->key->col, sp->key->origin);
                ct_ynode *val = k ? copy_tree(b->doc, sp->val, sp->val->line, sp->val->col, sp->val->origin) : NULL;
                if (!val) {
                    ct_ynode_free(k);
                    rc = ct_last_status();
                    break;
                }
                m->pairs[m->n].key = k;
                m->pairs[m->n].val = val;
                m->n++;
            }
        }
    }
    for (size_t i = 0; i < n_merges; i++) {
        int r1 = bury(b, merges[i].key), r2 = bury(b, merges[i].val);
        if (!rc) rc = r1 ? r1 : r2;
    }
    free(merges);
    return rc;
}

/* Attaches a finished node to the open collection (or makes it the root). */
static int attach(builder *b, ct_ynode *n) {
    if (b->depth == 0) {
        b->root = n;
        return CT_OK;
    }
    ct_ynode *top = b->stack[b->depth - 1];
    if (top->kind == CT_Y_SEQ) {
        if (grow(top)) return CT_ERUNTIME;
        top->items[top->n++] = n;
        return CT_OK;
    }
    ct_ynode **pk = &b->pending_key[b->depth - 1];
    if (!*pk) {
        if (n->kind != CT_Y_SCALAR)
            return yerr(n->origin, n->line, n->col, "a key must be a plain name, not %s",
                        n->kind == CT_Y_SEQ ? "a list" : "a mapping");
        *pk = n;
        return CT_OK;
    }
    if (grow(top)) return CT_ERUNTIME;
    top->pairs[top->n].key = *pk;
    top->pairs[top->n].val = n;
    top->n++;
    *pk = NULL;
    return CT_OK;
}

/* Scalars keep resolution (plain) unless quoted or tagged !!str; other core
 * tags are allowed, anything else is refused rather than silently ignored. */
static int check_tag(builder *b, const yaml_event_t *ev, const unsigned char *tag, bool scalar, bool *force_str,
                     bool *force_plain) {
    *force_str = *force_plain = false;
    if (!tag) return CT_OK;
    const char *t = (const char *)tag;
    if (!strcmp(t, "!") || (scalar && !strcmp(t, TAG_PREFIX "str"))) {
        *force_str = true;
        return CT_OK;
    }
    if (scalar && (!strcmp(t, TAG_PREFIX "int") || !strcmp(t, TAG_PREFIX "float") || !strcmp(t, TAG_PREFIX "bool") ||
                   !strcmp(t, TAG_PREFIX "null"))) {
        *force_plain = true;
        return CT_OK;
    }
    if (!scalar && (!strcmp(t, TAG_PREFIX "seq") || !strcmp(t, TAG_PREFIX "map"))) return CT_OK;
    return yerr(b->origin, pos_line(b, &ev->start_mark), pos_col(b, &ev->start_mark),
                "tag '%s' is not supported (only !!str, !!int, !!float, !!bool, !!null)", t);
}

static int on_event(builder *b, const yaml_event_t *ev) {
    int line = pos_line(b, &ev->start_mark), col = pos_col(b, &ev->start_mark);
    bool fs, fp;
    switch (ev->type) {
    case YAML_SCALAR_EVENT: {
        CT_TRY(check_tag(b, ev, ev->data.scalar.tag, true, &fs, &fp));
        bool plain = !fs && (fp || ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE);
        ct_ynode *n = new_scalar(b->doc, (const char *)ev->data.scalar.value, ev->data.scalar.length, plain, b->origin,
                                 line, col);
        if (!n) return ct_last_status();
        if (ev->data.scalar.anchor && add_anchor(b, ev->data.scalar.anchor, n)) {
            ct_ynode_free(n);
            return CT_ERUNTIME;
        }
        int rc = attach(b, n);
        if (rc) ct_ynode_free(n);
        return rc;
    }
    case YAML_SEQUENCE_START_EVENT:
    case YAML_MAPPING_START_EVENT: {
        bool seq = ev->type == YAML_SEQUENCE_START_EVENT;
        CT_TRY(check_tag(b, ev, seq ? ev->data.sequence_start.tag : ev->data.mapping_start.tag, false, &fs, &fp));
        if (b->depth == MAX_DEPTH)
            return yerr(b->origin, line, col, "nested deeper than %d levels", MAX_DEPTH);
        ct_ynode *n = new_node(b->doc, seq ? CT_Y_SEQ : CT_Y_MAP, b->origin, line, col);
        if (!n) return ct_last_status();
        const unsigned char *a = seq ? ev->data.sequence_start.anchor : ev->data.mapping_start.anchor;
        if (a && add_anchor(b, a, n)) {
            ct_ynode_free(n);
            return CT_ERUNTIME;
        }
        b->pending_key[b->depth] = NULL;
        b->stack[b->depth++] = n;
        return CT_OK;
    }
    case YAML_SEQUENCE_END_EVENT:
    case YAML_MAPPING_END_EVENT: {
        ct_ynode *n = b->stack[--b->depth];
        int rc = n->kind == CT_Y_MAP ? finish_map(b, n) : CT_OK;
        if (!rc) {
            complete_anchor(b, n);
            rc = attach(b, n);
        }
        if (rc) ct_ynode_free(n);
        return rc;
    }
    case YAML_ALIAS_EVENT: {
        const char *name = (const char *)ev->data.alias.anchor;
        for (size_t i = b->n_anchors; i-- > 0;) {
            if (strcmp(b->anchors[i].name, name) != 0) continue;
            if (!b->anchors[i].complete)
                return yerr(b->origin, line, col, "alias *%s refers to a node that contains it", name);
            ct_ynode *n = copy_tree(b->doc, b->anchors[i].node, line, col, b->origin);
            if (!n) return ct_last_status();
            int rc = attach(b, n);
            if (rc) ct_ynode_free(n);
            return rc;
        }
        return yerr(b->origin, line, col, "unknown alias *%s (define it first with &%s)", name, name);
    }
    default: return CT_OK;
    }
}

static int parse(ct_ydoc *doc, const char *text, size_t len, const char *origin_in, bool nopos, ct_ynode **out) {
    *out = NULL;
    const char *origin = ct_ydoc_origin(doc, origin_in);
    if (!origin) return oom();
    yaml_parser_t p;
    if (!yaml_parser_initialize(&p)) return oom();
    yaml_parser_set_input_string(&p, (const unsigned char *)text, len);
    builder b = {.doc = doc, .origin = origin, .nopos = nopos};
    int rc = CT_OK, n_docs = 0;
    for (bool done = false; !done && !rc;) {
        yaml_event_t ev;
        if (!yaml_parser_parse(&p, &ev)) {
            const yaml_mark_t *m = p.problem ? &p.problem_mark : &p.context_mark;
            char ctx[160] = "";
            if (p.context) snprintf(ctx, sizeof ctx, " (%s)", p.context);
            if (nopos)
                rc = yerr(origin, 0, 0, "YAML syntax error in the value: %s%s (quote the value if it is text)",
                          p.problem ? p.problem : "malformed input", ctx);
            else
                rc = yerr(origin, (int)m->line + 1, (int)m->column + 1, "YAML syntax error: %s%s",
                          p.problem ? p.problem : "malformed input", ctx);
            break;
        }
        if (ev.type == YAML_DOCUMENT_START_EVENT && ++n_docs > 1)
            rc = yerr(origin, pos_line(&b, &ev.start_mark), pos_col(&b, &ev.start_mark),
                      "a second YAML document ('---'); a config is one document");
        if (!rc) rc = on_event(&b, &ev);
        done = ev.type == YAML_STREAM_END_EVENT;
        yaml_event_delete(&ev);
    }
    yaml_parser_delete(&p);
    while (b.depth > 0) { /* unwind on error: open collections and their waiting keys */
        b.depth--;
        ct_ynode_free(b.pending_key[b.depth]);
        ct_ynode_free(b.stack[b.depth]);
    }
    for (size_t i = 0; i < b.n_anchors; i++) free(b.anchors[i].name);
    free(b.anchors);
    for (size_t i = 0; i < b.n_graveyard; i++) ct_ynode_free(b.graveyard[i]);
    free(b.graveyard);
    if (rc) {
        ct_ynode_free(b.root);
        return rc;
    }
    *out = b.root;
    return CT_OK;
}

int ct_ydoc_load(ct_ydoc *doc, const char *text, size_t len, const char *origin) {
    return parse(doc, text, len, origin, false, &doc->root);
}

int ct_ydoc_parse_value(ct_ydoc *doc, const char *text, const char *origin, ct_ynode **out) {
    CT_TRY(parse(doc, text, strlen(text), origin, true, out));
    if (!*out) { /* empty text: a null, as `key:` with nothing after it */
        const char *o = ct_ydoc_origin(doc, origin);
        if (!o || !(*out = new_scalar(doc, "", 0, true, o, 0, 0))) return ct_last_status();
    }
    return CT_OK;
}
