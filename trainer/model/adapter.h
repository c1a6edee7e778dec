/* PEFT LoRA adapter directories (docs/DESIGN.md, "LoRA and PEFT adapters"): adapter_config.json +
 * adapter_model.safetensors, as PEFT's save_pretrained writes them and as
 * PEFT/XTuner/transformers read them.
 *
 * Keys: "base_model.model.model.layers.N.attention.wqkv.lora_A.weight" (and
 * .lora_B, for wqkv/wo under attention., w1/w2/w3 under feed_forward.), the head
 * "base_model.model.output.lora_A.weight". PEFT saves without the adapter name;
 * keys with it (".lora_A.default.weight", an unfiltered state_dict) are read as
 * the same key. Values F32/BF16/F16 are read (converted to f32); we write F32
 * with metadata {"format": "pt"}.
 *
 * Reading checks everything against the model and the LoRA slots: r, every
 * targeted module's A and B present with shapes [r, in] / [out, r], no key
 * for a module outside target_modules, no unknown key; any failure is
 * CT_EINPUT naming the file and key. target_modules may be a list (PEFT's
 * "name or suffix after a dot" matching), "all-linear" (the five block
 * linears, not the head) or a regular expression (POSIX ERE, fully matched
 * against module names as PEFT's re.fullmatch; targets that differ between
 * layers are refused). Refused with a message: adapter_model.bin (a pickle:
 * never unpickled; convert it to safetensors), non-LORA peft_type, bias other
 * than "none", use_dora, fan_in_fan_out, rank_pattern/alpha_pattern,
 * layers_to_transform, modules_to_save.
 *
 * Writing builds the directory under a temp name and renames it into place;
 * an existing adapter directory (one holding adapter_config.json) is replaced,
 * any other non-empty directory is refused. Nothing half-written is left. */
#ifndef CT_ADAPTER_H
#define CT_ADAPTER_H

#include <stdbool.h>

#include "trainer/model/lora.h"
#include "trainer/model/model.h"

typedef struct {
    ct_lora_config lora;       /* r, alpha, dropout, targets, use_rslora (seed 0) */
    char base_model[1024];     /* base_model_name_or_path, "" when null/absent */
} ct_adapter_config;

/* Reads and checks DIR/adapter_config.json. n_layers is the model's (for
 * regex targets); the config alone cannot tell whether a target list fits a
 * model, ct_adapter_load* check that. */
int ct_adapter_read_config(const char *dir, int n_layers, ct_adapter_config *cfg);

/* Writes the adapter of `lora` into dir (see above). base_model may be NULL. */
int ct_adapter_save(const char *dir, const ct_lora *lora, const char *base_model);

/* Loads DIR's A/B values into existing slots: the adapter's r and targets must
 * equal the slots' (CT_EINPUT otherwise). alpha/dropout/rsLoRA of the slots
 * are left as they are. */
int ct_adapter_load_into(const char *dir, ct_lora *lora);

/* Reads DIR's config, creates matching LoRA slots on the model (scale from
 * alpha/r or rsLoRA), and loads the values. trainable as in ct_lora_new. The
 * model owns the slots; *out (may be NULL) gets them. On error the model has
 * no LoRA. */
int ct_adapter_load(const char *dir, ct_model *m, bool trainable, ct_lora **out);

#endif
