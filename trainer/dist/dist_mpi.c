/* The MPI communicator (trainer/dist/dist.h): MPI_COMM_WORLD with errors
 * returned (not fatal), the local rank from MPI_Comm_split_type(SHARED), and
 * every collective started non-blocking and polled until it completes or the
 * time-out passes, so a peer that is stuck, lost or killed ends the job with
 * a message instead of a hang (OpenMPI's mpirun also kills the job at once
 * when a rank dies). Large f32 buffers go in buckets of CT_DIST_BUCKET
 * floats, all started before the first is waited for. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "autograd/ct_error.h"
#include "trainer/dist/dist.h"

#define CT_DIST_BUCKET ((size_t)4 << 20) /* floats per all-reduce: 16 MiB */

typedef struct {
    MPI_Comm world, local;
} mpi_state;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int mpi_fail(ct_dist *d, int err, const char *call, const char *what) {
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(err, msg, &len) != MPI_SUCCESS) snprintf(msg, sizeof msg, "error %d", err);
    return ct_errorf(CT_ERUNTIME, "rank %d of %d (%s): %s failed in %s: %s (a peer was lost or failed)", d->rank,
                     d->world, d->host, call, what, msg);
}

/* Waits for n requests, polling; past the time-out the job is stuck. */
static int wait_all(ct_dist *d, MPI_Request *req, int n, double timeout_s, const char *call, const char *what) {
    double t0 = now_s();
    struct timespec nap = {0, 0};
    for (long spins = 0;; spins++) {
        int done = 0;
        int err = MPI_Testall(n, req, &done, MPI_STATUSES_IGNORE);
        if (err != MPI_SUCCESS) return mpi_fail(d, err, call, what);
        if (done) return CT_OK;
        if (now_s() - t0 > timeout_s)
            return ct_errorf(CT_ERUNTIME, "rank %d of %d (%s): no answer from the other ranks within %.0f s in %s "
                             "(%s): a rank is stuck or gone (CTUNER_DIST_TIMEOUT sets the limit)", d->rank, d->world,
                             d->host, timeout_s, what, call);
        /* spin briefly (a collective between iterations is usually quick),
         * then sleep up to 1 ms between polls */
        if (spins > 1000) {
            nap.tv_nsec = nap.tv_nsec < 1000000 ? nap.tv_nsec + 20000 : 1000000;
            nanosleep(&nap, NULL);
        }
    }
}

static MPI_Datatype mpi_type(ct_dist_type t) {
    return t == CT_DIST_F32 ? MPI_FLOAT : t == CT_DIST_F64 ? MPI_DOUBLE : MPI_INT64_T;
}

static size_t type_size(ct_dist_type t) { return t == CT_DIST_F32 ? 4 : 8; }

static int m_allreduce(ct_dist *d, void *buf, size_t n, ct_dist_type type, const char *what) {
    mpi_state *s = d->impl;
    size_t nb = (n + CT_DIST_BUCKET - 1) / CT_DIST_BUCKET;
    MPI_Request stack[16], *req = nb <= 16 ? stack : malloc(nb * sizeof *req);
    if (!req) return ct_errorf(CT_ERUNTIME, "out of memory");
    int rc = CT_OK;
    size_t started = 0;
    for (size_t b = 0; b < nb; b++, started++) {
        size_t off = b * CT_DIST_BUCKET, len = n - off < CT_DIST_BUCKET ? n - off : CT_DIST_BUCKET;
        int err = MPI_Iallreduce(MPI_IN_PLACE, (char *)buf + off * type_size(type), (int)len, mpi_type(type),
                                 MPI_SUM, s->world, &req[b]);
        if (err != MPI_SUCCESS) {
            rc = mpi_fail(d, err, "MPI_Iallreduce", what);
            break;
        }
    }
    if (!rc) rc = wait_all(d, req, (int)started, d->timeout_s, "MPI_Iallreduce", what);
    if (req != stack) free(req);
    return rc;
}

static int m_allgather(ct_dist *d, const void *mine, void *all, size_t bytes, const char *what) {
    mpi_state *s = d->impl;
    MPI_Request req;
    int err = MPI_Iallgather(mine, (int)bytes, MPI_BYTE, all, (int)bytes, MPI_BYTE, s->world, &req);
    if (err != MPI_SUCCESS) return mpi_fail(d, err, "MPI_Iallgather", what);
    return wait_all(d, &req, 1, d->timeout_s, "MPI_Iallgather", what);
}

static int m_bcast(ct_dist *d, void *buf, size_t bytes, const char *what) {
    mpi_state *s = d->impl;
    MPI_Request req;
    int err = MPI_Ibcast(buf, (int)bytes, MPI_BYTE, 0, s->world, &req);
    if (err != MPI_SUCCESS) return mpi_fail(d, err, "MPI_Ibcast", what);
    return wait_all(d, &req, 1, d->timeout_s, "MPI_Ibcast", what);
}

static int m_barrier(ct_dist *d, double timeout_s, const char *what) {
    mpi_state *s = d->impl;
    MPI_Request req;
    int err = MPI_Ibarrier(s->world, &req);
    if (err != MPI_SUCCESS) return mpi_fail(d, err, "MPI_Ibarrier", what);
    return wait_all(d, &req, 1, timeout_s, "MPI_Ibarrier", what);
}

static void m_abort(ct_dist *d, int code) {
    mpi_state *s = d->impl;
    fflush(stdout);
    fflush(stderr);
    MPI_Abort(s->world, code);
    exit(code); /* not reached */
}

static void m_finalize(ct_dist *d) {
    mpi_state *s = d->impl;
    if (s->local != MPI_COMM_NULL) MPI_Comm_free(&s->local);
    MPI_Finalize();
    free(s);
    free(d);
}

static const ct_dist_ops mpi_ops = {"mpi", m_allreduce, m_allgather, m_bcast, m_barrier, m_abort, m_finalize};

int ct_dist_mpi_init(ct_dist *d) {
    int provided = 0, err = MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided);
    if (err != MPI_SUCCESS) return ct_errorf(CT_ERUNTIME, "MPI_Init_thread failed (error %d)", err);
    mpi_state *s = calloc(1, sizeof *s);
    if (!s) return ct_errorf(CT_ERUNTIME, "out of memory");
    s->world = MPI_COMM_WORLD;
    s->local = MPI_COMM_NULL;
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(s->world, &d->rank);
    MPI_Comm_size(s->world, &d->world);
    err = MPI_Comm_split_type(s->world, MPI_COMM_TYPE_SHARED, d->rank, MPI_INFO_NULL, &s->local);
    if (err == MPI_SUCCESS) {
        MPI_Comm_rank(s->local, &d->local_rank);
        MPI_Comm_size(s->local, &d->local_world);
    } else {
        d->local_rank = d->rank;
        d->local_world = d->world;
    }
    d->ops = &mpi_ops;
    d->impl = s;
    return CT_OK;
}
