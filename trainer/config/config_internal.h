/* Internal to the config module: the schema as a table of fields, shared by
 * the reader (config_read.c), the writer (config_write.c) and the `--set`
 * path check (config_schema.c). One row per key, so reading, printing, the key list and the
 * docs test cannot drift apart.
 *
 * Ownership: the tables are static and never freed. */
#ifndef CT_CONFIG_INTERNAL_H
#define CT_CONFIG_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>

#include "trainer/config/config.h"
#include "trainer/config/config_yaml.h"

typedef enum {
    CF_INT,        /* int64_t */
    CF_DOUBLE,     /* double */
    CF_BOOL,       /* bool */
    CF_STR,        /* char * (owned) */
    CF_ENUM,       /* an enum stored as int: names[i] <-> values[i] (index when values is NULL) */
    CF_SECTION,    /* a mapping of `sub` fields stored at base + off */
    CF_SYSTEM,     /* SYSTEM: text, or {template: NAME} */
    CF_BETAS,      /* [beta1, beta2] */
    CF_STRLIST,    /* evaluation_inputs */
    CF_TARGETS,    /* lora.target_modules -> CT_LORA_* bits */
    CF_SCHEDULE,   /* param_scheduler: null, or a list of `sub` mappings */
    CF_RANDOMNESS, /* XTuner's randomness: {seed, deterministic}, read into the top-level fields */
} ct_cf_type;

enum {
    CF_NULLABLE = 1u << 0,   /* null allowed: stored as null_as (numbers) or NULL (strings) */
    CF_REQUIRED = 1u << 1,   /* must be present */
    CF_LO_OPEN = 1u << 2,    /* value > lo (else >= lo) */
    CF_HI_OPEN = 1u << 3,    /* value < hi (else <= hi) */
    CF_NOSTORE = 1u << 4,    /* checked, not stored (compatibility keys) */
    CF_HIDDEN = 1u << 5,     /* not printed */
    CF_POW2 = 1u << 6,       /* integer power of two */
    CF_TEMPLATE = 1u << 7,   /* a prompt template name (datasets/template.h) */
    CF_ONLY_FALSE = 1u << 8, /* a bool accepted for compatibility with its one supported value */
    CF_ONLY_TRUE = 1u << 9,
    CF_ENABLES = 1u << 10,   /* a section whose presence turns its first (bool) field on */
};

typedef struct ct_cfield {
    const char *name;
    ct_cf_type type;
    size_t off;
    unsigned flags;
    double lo, hi;                  /* CF_INT/CF_DOUBLE range; -HUGE_VAL/HUGE_VAL when open-ended */
    double null_as;                 /* numbers: what null is stored as */
    const char *const *names;       /* CF_ENUM, NULL-terminated */
    const int *values;              /* CF_ENUM stored values, or NULL for the index */
    const struct ct_cfield *sub;    /* CF_SECTION / CF_SCHEDULE / CF_SYSTEM / CF_RANDOMNESS keys */
    unsigned sched_types;           /* param_scheduler keys: bit per ct_sched_type that takes it; 0 = all */
    const char *comment;            /* printed on its own line before the key */
    const char *what;               /* phrase for "expected ..." when the generic one does not fit */
} ct_cfield;

/* The top-level table, terminated by a row with name NULL. */
extern const ct_cfield ct_config_fields[];

/* Reads the tree into *c (which holds the defaults). `root` may be NULL (an
 * empty document). */
int ct_config_from_tree(const ct_ynode *root, const char *origin, ct_run_config *c);

/* Checks a `--set` key path (split at the dots) against the schema: CT_EINPUT
 * naming the unknown part. is_index[i] tells whether segment i is a list index. */
int ct_config_check_path(char *const *segs, int n, const char *origin, bool *is_index);

/* The field named `name` in the NULL-terminated table, or NULL. */
const ct_cfield *ct_config_field(const ct_cfield *table, const char *name);

/* ---- phrases of messages (config_schema.c), shared by the reader and the path check ---- */

#define CT_CFG_PATH_CAP 320
/* "prefix.part" / "prefix.i" into buf[CT_CFG_PATH_CAP] (cut when too long: messages only). */
void ct_cfg_path_join(char *buf, const char *prefix, const char *part);
void ct_cfg_path_index(char *buf, const char *prefix, size_t i);
/* "a, b, c" of a NULL-terminated list / of a table's keys (only those a
 * param_scheduler type takes when sched_type_bit is not 0). */
void ct_cfg_join_names(const char *const *names, char *buf, size_t cap);
void ct_cfg_table_names(const ct_cfield *t, unsigned sched_type_bit, char *buf, size_t cap);
/* What a field expects, for "(expected ...)": "an integer in [1, 65536]", "one of: nf4, fp4". */
void ct_cfg_expect(const ct_cfield *f, char *buf, size_t cap);
/* "; did you mean 'x'?" for the closest candidate within reach, else "". */
void ct_cfg_suggest(const char *got, const char *const *cands, size_t n, char *buf, size_t cap);
void ct_cfg_suggest_field(const char *got, const ct_cfield *t, char *buf, size_t cap);

/* The LoRA target names in printing order: wqkv, wo, w1, w2, w3, output. */
extern const char *const ct_config_target_names[];

#endif
