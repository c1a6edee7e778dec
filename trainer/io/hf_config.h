/* Hugging Face config.json of an InternLM2-family model: every InternLM2Config
 * field, checked (sizes positive, heads divide hidden_size, kv heads divide
 * heads, even head_dim, silu, supported rope_scaling); bad input is CT_EINPUT
 * naming the file and the field. Absent optional fields take InternLM2Config's
 * defaults. The parsed document is kept (`raw`) so it can be written back with
 * changes; `quantization_config` is a borrowed view into it.
 * The struct owns `raw`; release it with ct_hf_config_free. */
#ifndef CT_HF_CONFIG_H
#define CT_HF_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

typedef enum { CT_ROPE_SCALING_NONE = 0, CT_ROPE_SCALING_LINEAR, CT_ROPE_SCALING_DYNAMIC } ct_rope_scaling_type;

typedef struct {
    char architecture[64]; /* architectures[0], "" when absent */
    char model_type[32];   /* "internlm2" */
    int64_t hidden_size;             /* D */
    int64_t intermediate_size;       /* I */
    int64_t num_hidden_layers;       /* L */
    int64_t num_attention_heads;     /* Hq */
    int64_t num_key_value_heads;     /* Hkv (default Hq) */
    int64_t head_dim;                /* D / Hq (derived) */
    int64_t vocab_size;              /* V */
    int64_t max_position_embeddings; /* default 2048 */
    double rms_norm_eps;             /* default 1e-6 */
    double rope_theta;               /* default 10000 */
    ct_rope_scaling_type rope_scaling;
    double rope_scaling_factor;      /* 1 when none */
    bool bias;                       /* default true (InternLM2Config) */
    bool tie_word_embeddings;        /* default false */
    char torch_dtype[16];            /* "bfloat16", "float16", "float32"; "" when absent */
    int64_t bos_token_id, eos_token_id, pad_token_id; /* -1 when null; defaults 1, 2, 0 */
    char hidden_act[16];             /* "silu" */
    double initializer_range;        /* default 0.02 */
    json_t *quantization_config;     /* borrowed from raw; NULL when absent */
    json_t *raw;                     /* the whole document (owned) */
} ct_hf_config;

/* `path` is a config.json or a directory holding one. On error the struct is
 * left empty (nothing to free, though freeing is harmless). */
int ct_hf_config_load(const char *path, ct_hf_config *cfg);
/* Same from memory; `name` is used in messages in place of a path. */
int ct_hf_config_parse(const char *text, size_t len, const char *name, ct_hf_config *cfg);
void ct_hf_config_free(ct_hf_config *cfg);

/* The block linears' widths that are not plain sizes: wqkv's rows
 * (num_attention_heads + 2 x num_key_value_heads) x head_dim, and wo's input
 * num_attention_heads x head_dim. For a config ct_hf_config_load accepted. */
static inline int64_t ct_hf_config_wqkv_rows(const ct_hf_config *c) {
    return (c->num_attention_heads + 2 * c->num_key_value_heads) * c->head_dim;
}
static inline int64_t ct_hf_config_attn_width(const ct_hf_config *c) { return c->num_attention_heads * c->head_dim; }

/* Parameter count of the model the config describes (embeddings, blocks, norm, head). */
int64_t ct_hf_config_num_params(const ct_hf_config *cfg);

/* Writes raw back (2-space indent, atomically), with torch_dtype replaced when
 * `torch_dtype` is not NULL. */
int ct_hf_config_write(const ct_hf_config *cfg, const char *path, const char *torch_dtype);

#endif
