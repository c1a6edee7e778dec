/* The NCCL all-reduce of device buffers (trainer/dist/dist.h): the LoRA
 * grads of cuda ranks summed GPU to GPU instead of staged through the host.
 *
 * libnccl is opened at run time (dlopen "libnccl.so.2"), not linked: it is
 * some 200 MiB, the CUDA build must run where it is absent (the single
 * process, the GPU bundle), and a driver's or PyTorch's copy serves as well
 * as the toolkit's. nccl.h gives the types only; the functions come from
 * dlsym. When the library is missing on any rank, every rank stays on the
 * host path (or, with CTUNER_DIST_NCCL=1, the run fails saying so).
 *
 * Overlap: a sum is enqueued on a stream of its own (non-blocking, so the
 * legacy default stream the backend launches every kernel on does not
 * serialise with it, cuda_kernels/cuda_check.h) after an event recorded on
 * the backend's stream: it starts once the kernels enqueued before it (the
 * backward of the layers whose grads it sums) are done, and runs while the
 * backward of the layers below goes on.
 *
 * Never a hang: the ranks meet in an MPI barrier (bounded) before the
 * blocking ncclCommInitRank, so all are alive when it starts; dev_finish
 * polls the sum stream with cudaStreamQuery and ncclCommGetAsyncError
 * against the communicator's time-out; past it, or on an asynchronous NCCL
 * error, the communicator is aborted (which frees the stuck kernel) and the
 * caller ends the job. */
#include <cuda_runtime_api.h>
#include <dlfcn.h>
#include <nccl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "autograd/ct_clock.h"
#include "autograd/ct_error.h"
#include "trainer/dist/dist.h"

typedef struct {
    void *lib; /* dlopen handle */
    ncclComm_t comm;
    ncclResult_t (*get_unique_id)(ncclUniqueId *id);
    ncclResult_t (*comm_init_rank)(ncclComm_t *comm, int nranks, ncclUniqueId id, int rank);
    ncclResult_t (*all_reduce)(const void *send, void *recv, size_t count, ncclDataType_t type, ncclRedOp_t op,
                               ncclComm_t comm, cudaStream_t stream);
    ncclResult_t (*async_error)(ncclComm_t comm, ncclResult_t *err);
    ncclResult_t (*comm_abort)(ncclComm_t comm);
    ncclResult_t (*comm_destroy)(ncclComm_t comm);
    const char *(*error_string)(ncclResult_t r);
    ncclResult_t (*get_version)(int *version);
    cudaStream_t stream; /* the sums' stream (non-blocking) */
    cudaEvent_t ready;   /* recorded on the backend's stream before each sum */
} nccl_state;

/* dlsym into a function pointer (POSIX: through the object pointer's bytes) */
static bool sym(void *lib, const char *name, void *fn_ptr) {
    void *p = dlsym(lib, name);
    if (!p) return false;
    memcpy(fn_ptr, &p, sizeof p);
    return true;
}

static int load(nccl_state *s, char *why, size_t cap) {
    s->lib = dlopen("libnccl.so.2", RTLD_NOW | RTLD_LOCAL);
    if (!s->lib) s->lib = dlopen("libnccl.so", RTLD_NOW | RTLD_LOCAL);
    if (!s->lib) {
        snprintf(why, cap, "libnccl.so.2 not found (%s)", dlerror());
        return CT_ERUNTIME;
    }
    bool ok = sym(s->lib, "ncclGetUniqueId", &s->get_unique_id) &&
              sym(s->lib, "ncclCommInitRank", &s->comm_init_rank) && sym(s->lib, "ncclAllReduce", &s->all_reduce) &&
              sym(s->lib, "ncclCommGetAsyncError", &s->async_error) &&
              sym(s->lib, "ncclCommAbort", &s->comm_abort) && sym(s->lib, "ncclCommDestroy", &s->comm_destroy) &&
              sym(s->lib, "ncclGetErrorString", &s->error_string) && sym(s->lib, "ncclGetVersion", &s->get_version);
    if (!ok) {
        snprintf(why, cap, "libnccl lacks a function this build needs (%s)", dlerror());
        return CT_ERUNTIME;
    }
    return CT_OK;
}

static int nccl_fail(ct_dist *d, nccl_state *s, ncclResult_t r, const char *call, const char *what) {
    bool peer = r == ncclRemoteError || r == ncclSystemError;
    return ct_errorf(CT_ERUNTIME, "rank %d of %d (%s): %s failed in %s: %s%s", d->rank, d->world, d->host, call, what,
                     s->error_string(r), peer ? " (a peer was lost or failed)" : "");
}

static int cuda_fail(ct_dist *d, cudaError_t ce, const char *call, const char *what) {
    return ct_errorf(CT_ERUNTIME, "rank %d of %d (%s): %s: %s failed: %s", d->rank, d->world, d->host, what, call,
                     cudaGetErrorString(ce));
}

static int nccl_start_f32(ct_dist *d, float *dev, size_t n, const char *what) {
    nccl_state *s = d->dev_impl;
    cudaError_t ce = cudaEventRecord(s->ready, 0); /* after the grads' kernels on the backend's stream */
    if (ce != cudaSuccess) return cuda_fail(d, ce, "cudaEventRecord", what);
    ce = cudaStreamWaitEvent(s->stream, s->ready, 0);
    if (ce != cudaSuccess) return cuda_fail(d, ce, "cudaStreamWaitEvent", what);
    ncclResult_t r = s->all_reduce(dev, dev, n, ncclFloat32, ncclSum, s->comm, s->stream);
    if (r != ncclSuccess) return nccl_fail(d, s, r, "ncclAllReduce", what);
    return CT_OK;
}

/* Polls the sums' stream: bounded, and NCCL's asynchronous errors seen. The
 * backend's later kernels are enqueued after this returns, so they run after
 * the sums. */
static int nccl_finish(ct_dist *d, const char *what) {
    nccl_state *s = d->dev_impl;
    double t0 = ct_now_s();
    struct timespec nap = {0, 20000};
    for (;;) {
        cudaError_t ce = cudaStreamQuery(s->stream);
        if (ce == cudaSuccess) return CT_OK;
        if (ce != cudaErrorNotReady)
            return ct_errorf(CT_ERUNTIME, "rank %d of %d (%s): %s: CUDA error %s after ncclAllReduce", d->rank,
                             d->world, d->host, what, cudaGetErrorString(ce));
        ncclResult_t ae = ncclSuccess;
        if (s->async_error(s->comm, &ae) == ncclSuccess && ae != ncclSuccess) {
            s->comm_abort(s->comm);
            s->comm = NULL;
            return nccl_fail(d, s, ae, "ncclAllReduce", what);
        }
        if (ct_now_s() - t0 > d->timeout_s) {
            s->comm_abort(s->comm); /* frees the kernel that waits for the missing peer */
            s->comm = NULL;
            return ct_errorf(CT_ERUNTIME, "rank %d of %d (%s): no answer from the other ranks within %.0f s in %s "
                             "(ncclAllReduce): a rank is stuck or gone (CTUNER_DIST_TIMEOUT sets the limit)",
                             d->rank, d->world, d->host, d->timeout_s, what);
        }
        nanosleep(&nap, NULL);
    }
}

static void nccl_finalize(ct_dist *d) {
    nccl_state *s = d->dev_impl;
    if (!s) return;
    if (s->comm) s->comm_destroy(s->comm);
    if (s->ready) cudaEventDestroy(s->ready);
    if (s->stream) cudaStreamDestroy(s->stream);
    /* the library stays loaded: CUDA's atexit handlers may still run into it */
    free(s);
    d->dev_impl = NULL;
    d->dev_start_f32 = NULL;
    d->dev_finish = NULL;
    d->dev_finalize = NULL;
}

int ct_dist_nccl_init(ct_dist *d, bool *absent, char *note, size_t cap) {
    note[0] = '\0';
    *absent = false;
    nccl_state *s = calloc(1, sizeof *s);
    if (!s) return ct_errorf(CT_ERUNTIME, "out of memory");
    char why[512] = "";
    int64_t missing = load(s, why, sizeof why) != CT_OK;
    /* every rank takes the same path: NCCL only when all ranks loaded it */
    int rc = d->ops->allreduce(d, &missing, 1, CT_DIST_I64, "whether every rank has NCCL");
    if (!rc && missing) {
        snprintf(note, cap, "%s", why[0] ? why : "libnccl is missing on another rank");
        free(s);
        *absent = true;
        return CT_OK;
    }
    struct {
        int32_t ok;
        ncclUniqueId id;
    } msg;
    memset(&msg, 0, sizeof msg);
    if (!rc && d->rank == 0) {
        ncclResult_t r = s->get_unique_id(&msg.id);
        msg.ok = r == ncclSuccess;
        if (!msg.ok) rc = nccl_fail(d, s, r, "ncclGetUniqueId", "starting NCCL");
    }
    /* rank 0's unique id to every rank (also when rank 0 failed: the others then stop too) */
    if (!rc || d->rank == 0) {
        int brc = d->ops->bcast(d, &msg, sizeof msg, "the NCCL unique id");
        if (!rc) rc = brc;
    }
    if (!rc && !msg.ok) rc = ct_errorf(CT_ERUNTIME, "rank %d of %d (%s): rank 0 could not start NCCL", d->rank,
                                       d->world, d->host);
    /* all ranks alive before the blocking init */
    if (!rc) rc = d->ops->barrier(d, d->timeout_s, "joining the NCCL communicator");
    if (!rc) {
        ncclResult_t r = s->comm_init_rank(&s->comm, d->world, msg.id, d->rank);
        if (r != ncclSuccess) rc = nccl_fail(d, s, r, "ncclCommInitRank", "joining the NCCL communicator");
    }
    if (!rc) {
        cudaError_t ce = cudaStreamCreateWithFlags(&s->stream, cudaStreamNonBlocking);
        if (ce == cudaSuccess) ce = cudaEventCreateWithFlags(&s->ready, cudaEventDisableTiming);
        if (ce != cudaSuccess) rc = cuda_fail(d, ce, "creating the all-reduce's stream", "starting NCCL");
    }
    if (rc) {
        if (s->comm) s->comm_destroy(s->comm);
        if (s->stream) cudaStreamDestroy(s->stream);
        free(s);
        return rc;
    }
    int v = 0;
    s->get_version(&v);
    snprintf(note, cap, "NCCL %d.%d.%d", v / 10000, v / 100 % 100, v % 100);
    d->dev_impl = s;
    d->dev_start_f32 = nccl_start_f32;
    d->dev_finish = nccl_finish;
    d->dev_finalize = nccl_finalize;
    return CT_OK;
}
