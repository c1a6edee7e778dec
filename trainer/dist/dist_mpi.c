/* The MPI communicator (trainer/dist/dist.h): MPI_COMM_WORLD with errors
 * returned (not fatal), the local rank from MPI_Comm_split_type(SHARED), and
 * every collective started non-blocking and polled until it completes or the
 * time-out passes, so a peer that is stuck, lost or killed ends the job with
 * a message instead of a hang (OpenMPI's mpirun also kills the job at once
 * when a rank dies). Large f32 buffers go in buckets of CT_DIST_BUCKET
 * floats, all started before the first is waited for; the trainer's sums
 * overlapped with the backward (start_sum, progress, finish_sums) are the
 * same requests, kept in flight between calls. A non-blocking collective
 * moves only inside MPI calls, so a progress thread polls them while they
 * are in flight (MPI_THREAD_SERIALIZED, every MPI call then under one
 * mutex; CTUNER_DIST_PROGRESS_THREAD=0 leaves the polling to the trainer's
 * calls at each layer of the backward). */
#include <mpi.h>
#include <pthread.h>
#include <sched.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "autograd/ct_clock.h"
#include "autograd/ct_error.h"
#include "trainer/dist/dist.h"

#define CT_DIST_BUCKET ((size_t)4 << 20) /* floats per all-reduce: 16 MiB */

typedef struct {
    MPI_Comm world, local;
    MPI_Request *inflight; /* (cap) the sums started and not yet finished */
    int n_inflight, cap;
    /* The progress thread (when MPI grants MPI_THREAD_SERIALIZED): while
     * sums are in flight it polls them, so they move while the main thread
     * computes (ct_dist.progress_thread says whether it runs). `mu`
     * serialises every MPI call made while it may run. */
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t wake;
    bool polling; /* sums in flight not yet seen complete by the thread */
    bool stop;
} mpi_state;

/* Every MPI call while the progress thread lives (MPI_THREAD_SERIALIZED). */
static void lock(ct_dist *d) {
    if (d->progress_thread) pthread_mutex_lock(&((mpi_state *)d->impl)->mu);
}
static void unlock(ct_dist *d) {
    if (d->progress_thread) pthread_mutex_unlock(&((mpi_state *)d->impl)->mu);
}

static int mpi_fail(ct_dist *d, int err, const char *call, const char *what) {
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(err, msg, &len) != MPI_SUCCESS) snprintf(msg, sizeof msg, "error %d", err);
    return ct_errorf(CT_ERUNTIME, "rank %d of %d (%s): %s failed in %s: %s (a peer was lost or failed)", d->rank,
                     d->world, d->host, call, what, msg);
}

/* Waits for n requests, polling; past the time-out the job is stuck. A
 * non-blocking collective moves only inside MPI calls (each poll copies a
 * few fragments), so the first second polls without sleeping (yielding the
 * core: ranks may share cores): a 36 MiB sum of 2 ranks takes 42 ms so and
 * 890 ms with 1 ms naps between polls. After that the wait is for a slow
 * peer, and naps of up to 1 ms spare the core. */
static int wait_all(ct_dist *d, MPI_Request *req, int n, double timeout_s, const char *call, const char *what) {
    double t0 = ct_now_s(), t = t0;
    struct timespec nap = {0, 0};
    for (long polls = 0;; polls++) {
        int done = 0;
        lock(d);
        int err = MPI_Testall(n, req, &done, MPI_STATUSES_IGNORE);
        unlock(d);
        if (err != MPI_SUCCESS) return mpi_fail(d, err, call, what);
        if (done) return CT_OK;
        if ((polls & 63) == 0) t = ct_now_s();
        if (t - t0 > timeout_s)
            return ct_errorf(CT_ERUNTIME, "rank %d of %d (%s): no answer from the other ranks within %.0f s in %s "
                             "(%s): a rank is stuck or gone (CTUNER_DIST_TIMEOUT sets the limit)", d->rank, d->world,
                             d->host, timeout_s, what, call);
        if (t - t0 < 1.0) {
            sched_yield();
        } else {
            nap.tv_nsec = nap.tv_nsec < 1000000 ? nap.tv_nsec + 20000 : 1000000;
            nanosleep(&nap, NULL);
        }
    }
}

static MPI_Datatype mpi_type(ct_dist_type t) {
    return t == CT_DIST_F32 ? MPI_FLOAT : t == CT_DIST_F64 ? MPI_DOUBLE : MPI_INT64_T;
}

static size_t type_size(ct_dist_type t) { return t == CT_DIST_F32 ? 4 : 8; }

/* The progress thread: polls the sums in flight, between polls a short nap
 * (the sums share the cores with the compute; each poll moves a few
 * fragments), and sleeps on `wake` when there are none. */
static void *progress_main(void *arg) {
    mpi_state *s = arg;
    struct timespec nap = {0, 20000};
    pthread_mutex_lock(&s->mu);
    for (;;) {
        while (!s->stop && !s->polling) pthread_cond_wait(&s->wake, &s->mu);
        if (s->stop) break;
        int done = 0;
        if (MPI_Testall(s->n_inflight, s->inflight, &done, MPI_STATUSES_IGNORE) != MPI_SUCCESS || done)
            s->polling = false; /* (an error: the main thread's wait reports it) */
        pthread_mutex_unlock(&s->mu);
        nanosleep(&nap, NULL);
        pthread_mutex_lock(&s->mu);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* Starts the sum of buf[n] in buckets of CT_DIST_BUCKET (an MPI count is an int). */
static int m_start_sum(ct_dist *d, void *buf, size_t n, ct_dist_type type, const char *what) {
    mpi_state *s = d->impl;
    int rc = CT_OK;
    lock(d);
    for (size_t off = 0; off < n && !rc; off += CT_DIST_BUCKET) {
        size_t len = n - off < CT_DIST_BUCKET ? n - off : CT_DIST_BUCKET;
        if (s->n_inflight == s->cap) { /* grows in the first steps only */
            int cap = s->cap ? 2 * s->cap : 64;
            MPI_Request *r = realloc(s->inflight, (size_t)cap * sizeof *r);
            if (!r) {
                rc = ct_errorf(CT_ERUNTIME, "out of memory");
                break;
            }
            s->inflight = r;
            s->cap = cap;
        }
        int err = MPI_Iallreduce(MPI_IN_PLACE, (char *)buf + off * type_size(type), (int)len, mpi_type(type),
                                 MPI_SUM, s->world, &s->inflight[s->n_inflight]);
        if (err != MPI_SUCCESS) rc = mpi_fail(d, err, "MPI_Iallreduce", what);
        else s->n_inflight++;
    }
    if (d->progress_thread) {
        s->polling = s->n_inflight > 0;
        pthread_cond_signal(&s->wake);
    }
    unlock(d);
    return rc;
}

static int m_progress(ct_dist *d, const char *what) {
    mpi_state *s = d->impl;
    if (d->progress_thread || s->n_inflight == 0) return CT_OK; /* (the thread polls) */
    int done = 0;
    int err = MPI_Testall(s->n_inflight, s->inflight, &done, MPI_STATUSES_IGNORE);
    if (err != MPI_SUCCESS) return mpi_fail(d, err, "MPI_Iallreduce", what);
    return CT_OK;
}

static int m_finish_sums(ct_dist *d, const char *what) {
    mpi_state *s = d->impl;
    int rc = s->n_inflight ? wait_all(d, s->inflight, s->n_inflight, d->timeout_s, "MPI_Iallreduce", what) : CT_OK;
    lock(d);
    s->n_inflight = 0;
    s->polling = false;
    unlock(d);
    return rc;
}

static int m_allreduce(ct_dist *d, void *buf, size_t n, ct_dist_type type, const char *what) {
    mpi_state *s = d->impl;
    if (s->n_inflight) return ct_errorf(CT_ERUNTIME, "%s: a sum started earlier is still in flight", what);
    int rc = m_start_sum(d, buf, n, type, what);
    int frc = m_finish_sums(d, what); /* also after a failed start: those started complete first */
    return rc ? rc : frc;
}

static int m_allgather(ct_dist *d, const void *mine, void *all, size_t bytes, const char *what) {
    mpi_state *s = d->impl;
    MPI_Request req;
    lock(d);
    int err = MPI_Iallgather(mine, (int)bytes, MPI_BYTE, all, (int)bytes, MPI_BYTE, s->world, &req);
    unlock(d);
    if (err != MPI_SUCCESS) return mpi_fail(d, err, "MPI_Iallgather", what);
    return wait_all(d, &req, 1, d->timeout_s, "MPI_Iallgather", what);
}

static int m_bcast(ct_dist *d, void *buf, size_t bytes, const char *what) {
    mpi_state *s = d->impl;
    MPI_Request req;
    lock(d);
    int err = MPI_Ibcast(buf, (int)bytes, MPI_BYTE, 0, s->world, &req);
    unlock(d);
    if (err != MPI_SUCCESS) return mpi_fail(d, err, "MPI_Ibcast", what);
    return wait_all(d, &req, 1, d->timeout_s, "MPI_Ibcast", what);
}

static int m_barrier(ct_dist *d, double timeout_s, const char *what) {
    mpi_state *s = d->impl;
    MPI_Request req;
    lock(d);
    int err = MPI_Ibarrier(s->world, &req);
    unlock(d);
    if (err != MPI_SUCCESS) return mpi_fail(d, err, "MPI_Ibarrier", what);
    return wait_all(d, &req, 1, timeout_s, "MPI_Ibarrier", what);
}

static void m_abort(ct_dist *d, int code) {
    mpi_state *s = d->impl;
    fflush(stdout);
    fflush(stderr);
    lock(d); /* (a rank may fail with sums in flight: the progress thread then polls; kept: the process ends) */
    MPI_Abort(s->world, code);
    exit(code); /* not reached */
}

static void m_finalize(ct_dist *d) {
    mpi_state *s = d->impl;
    if (d->progress_thread) {
        pthread_mutex_lock(&s->mu);
        s->stop = true;
        pthread_cond_signal(&s->wake);
        pthread_mutex_unlock(&s->mu);
        pthread_join(s->thread, NULL);
        pthread_mutex_destroy(&s->mu);
        pthread_cond_destroy(&s->wake);
    }
    if (s->local != MPI_COMM_NULL) MPI_Comm_free(&s->local);
    MPI_Finalize();
    free(s->inflight);
    free(s);
    free(d);
}

static const ct_dist_ops mpi_ops = {"mpi",     m_allreduce, m_start_sum, m_progress, m_finish_sums,
                                    m_allgather, m_bcast, m_barrier, m_abort, m_finalize};

int ct_dist_mpi_init(ct_dist *d) {
    int provided = 0, err = MPI_Init_thread(NULL, NULL, MPI_THREAD_SERIALIZED, &provided);
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
    /* the progress thread: only where MPI allows calls from several threads
     * one at a time, and not when CTUNER_DIST_PROGRESS_THREAD=0 */
    const char *pt = getenv("CTUNER_DIST_PROGRESS_THREAD");
    if (provided >= MPI_THREAD_SERIALIZED && !(pt && strcmp(pt, "0") == 0) &&
        pthread_mutex_init(&s->mu, NULL) == 0) {
        if (pthread_cond_init(&s->wake, NULL) == 0 && pthread_create(&s->thread, NULL, progress_main, s) == 0)
            d->progress_thread = true;
        else
            pthread_mutex_destroy(&s->mu); /* (the cond, if made, is dropped with the process) */
    }
    return CT_OK;
}
