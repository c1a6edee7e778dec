/* ct_embedding_host (the gather of a frozen table kept in host memory, for a
 * tape on a device backend) against ct_embedding with the same table on that
 * device: the same bits, for f32/bf16/f16 tables, on the CPU, the guarded
 * backend and cuda-emu with f32 and bf16 activations (the bf16 stores round
 * with ct_f32_to_bf16 on both paths), at a size that takes the OpenMP path
 * and at one that does not; nothing recorded; bad ids, a trainable table, a
 * table off the host and a third activation dtype refused with CT_EINPUT. */
#include <stdlib.h>
#include <string.h>

#include "autograd/backend.h"
#include "autograd/ops.h"
#include "autograd/tape.h"
#include "tests/testutil.h"

/* A [V, D] table of dtype dt on the CPU with random values (bf16/f16 from
 * random floats, so every bit pattern of interest occurs). */
static ct_tensor *host_table(ct_dtype dt, int64_t V, int64_t D, ct_test_rng *rng) {
    int64_t shape[2] = {V, D};
    ct_tensor *t = ct_test_need(ct_tensor_new(ct_cpu_backend(), dt, 2, shape, false));
    float *f = ct_test_need(malloc((size_t)(V * D) * sizeof *f));
    ct_test_fill(rng, f, V * D, 3.0);
    CHECK_OK(ct_convert(t->data, dt, f, CT_F32, V * D));
    free(f);
    return t;
}

/* One table dtype on one backend: y_dev = ct_embedding(table on be),
 * y_host = ct_embedding_host(table on the host), both downloaded, memcmp. */
static void compare(const ct_backend *be, ct_dtype dt, int64_t V, int64_t D, int64_t T, ct_test_rng *rng) {
    ct_tensor *ht = host_table(dt, V, D, rng);
    int64_t shape[2] = {V, D};
    ct_tensor *dtab = ct_test_need(ct_tensor_new(be, dt, 2, shape, false));
    CHECK_OK(be->upload(dtab->data, ht->data, ct_nbytes(ht)));
    int32_t *ids = ct_test_need(malloc((size_t)T * sizeof *ids)); /* [T] host: repeats, both ends */
    for (int64_t i = 0; i < T; i++) ids[i] = (int32_t)(i % 3 == 0 ? V - 1 - i % V : (i * 7919) % V);
    ct_tape tp;
    CHECK_OK(ct_tape_init(&tp, be, 1 << 20));
    ct_tensor *idt = ct_tape_new(&tp, CT_I32, 1, &T);
    CHECK_PTR(idt);
    if (idt) CHECK_OK(be->upload(idt->data, ids, (size_t)T * sizeof *ids));
    ct_tensor *yd = idt ? ct_embedding(&tp, dtab, idt) : NULL, *yh = ct_embedding_host(&tp, ht, ids, T);
    CHECK_PTR(yd);
    CHECK_PTR(yh);
    if (yd && yh) {
        CHECK(yh->dtype == be->act_dtype && yh->device == be->device && yh->shape[0] == T && yh->shape[1] == D,
              "%s: host gather gave %s on %s", be->name, ct_dtype_name(yh->dtype), ct_device_name(yh->device));
        size_t n = ct_nbytes(yd);
        unsigned char *a = ct_test_need(malloc(n)), *b = ct_test_need(malloc(n));
        CHECK_OK(be->download(a, yd->data, n));
        CHECK_OK(be->download(b, yh->data, n));
        CHECK(memcmp(a, b, n) == 0, "%s (%s activations), %s table [%lld, %lld], %lld ids: the host gather "
              "differs from the device's", be->name, ct_dtype_name(be->act_dtype), ct_dtype_name(dt),
              (long long)V, (long long)D, (long long)T);
        CHECK(!yh->requires_grad && tp.n_entries == 0, "%s: the host gather recorded %d entries", be->name,
              tp.n_entries);
        free(a), free(b);
    }
    ct_tape_free(&tp);
    free(ids);
    ct_tensor_free(be, dtab);
    ct_tensor_free(ct_cpu_backend(), ht);
}

static void refusals(const ct_backend *be, ct_test_rng *rng) {
    ct_tensor *ht = host_table(CT_F32, 11, 8, rng);
    int32_t ids[5] = {0, 3, 10, 2, 11};
    ct_tape tp;
    CHECK_OK(ct_tape_init(&tp, be, 1 << 20));
    ct_error_clear();
    CHECK(ct_embedding_host(&tp, ht, ids, 5) == NULL && ct_last_status() == CT_EINPUT &&
              strstr(ct_last_error(), "position 4"), "%s: id 11 of 11: %s", be->name, ct_last_error());
    ids[4] = -1;
    CHECK(ct_embedding_host(&tp, ht, ids, 5) == NULL && strstr(ct_last_error(), "position 4"), "%s: id -1: %s",
          be->name, ct_last_error());
    ids[4] = 1;
    ht->requires_grad = true;
    CHECK(ct_embedding_host(&tp, ht, ids, 5) == NULL && ct_last_status() == CT_EINPUT &&
              strstr(ct_last_error(), "trainable"), "%s: trainable table: %s", be->name, ct_last_error());
    ht->requires_grad = false;
    if (be->device != CT_CPU) {
        ct_tensor *dt = ct_test_need(ct_tensor_new(be, CT_F32, 2, ht->shape, false));
        CHECK(ct_embedding_host(&tp, dt, ids, 5) == NULL && ct_last_status() == CT_EINPUT &&
                  strstr(ct_last_error(), "host memory"), "%s: a device table: %s", be->name, ct_last_error());
        ct_tensor_free(be, dt);
    }
    ct_backend f16 = *be; /* a backend with f16 activations: no kernel stores those */
    f16.act_dtype = CT_F16;
    ct_tape tf;
    CHECK_OK(ct_tape_init(&tf, &f16, 1 << 20));
    CHECK(ct_embedding_host(&tf, ht, ids, 5) == NULL && ct_last_status() == CT_EINPUT, "%s: f16 activations: %s",
          be->name, ct_last_error());
    ct_tape_free(&tf);
    ct_tape_free(&tp);
    ct_tensor_free(ct_cpu_backend(), ht);
}

int main(void) {
    ct_test_rng rng = {42};
    const ct_backend *emu = ct_cuda_emu_backend();
    static ct_backend other; /* cuda-emu with the other activation dtype */
    if (emu) {
        other = *emu;
        other.act_dtype = emu->act_dtype == CT_BF16 ? CT_F32 : CT_BF16;
    }
    const ct_backend *bes[4] = {ct_cpu_backend(), ct_guarded_backend(), emu, emu ? &other : NULL};
    const ct_dtype dts[3] = {CT_F32, CT_BF16, CT_F16};
    for (int b = 0; b < 4; b++) {
        if (!bes[b]) {
            printf("backend %d: skipped (not in this build)\n", b);
            continue;
        }
        for (int k = 0; k < 3; k++) {
            compare(bes[b], dts[k], 13, 7, 9, &rng);      /* small: one thread */
            compare(bes[b], dts[k], 300, 256, 300, &rng); /* T * D > 65536: the OpenMP loop */
        }
        refusals(bes[b], &rng);
        printf("%s (%s activations): host gather == device gather for f32/bf16/f16 tables\n", bes[b]->name,
               ct_dtype_name(bes[b]->act_dtype));
    }
    return ct_test_finish();
}
