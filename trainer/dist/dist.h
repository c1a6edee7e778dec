/* The communicator of a data-parallel training run (`mpirun -np N ctuner
 * train`, `srun ctuner train`): rank, world size and local rank, and the few
 * collectives the trainer needs (sums of f32/f64/i64 buffers, an all-gather
 * of a small record, a broadcast from rank 0, a barrier), each waiting at
 * most a time-out so a stuck or lost peer ends the job instead of hanging it.
 *
 * Implementations behind one interface (trainer/train.c calls only this):
 *   single  (dist.c)      world 1, every collective a no-op; what a
 *                          `ctuner train` without a launcher gets;
 *   MPI     (dist_mpi.c)  OpenMPI/MPICH/Slurm-PMI, built when CMake finds
 *                          MPI: host buffers, non-blocking collectives polled
 *                          against the time-out;
 *   NCCL    (dist_nccl.c) built with CUDA and NCCL: device buffers of the
 *                          cuda backend all-reduced by NCCL (rank 0's unique
 *                          id broadcast over MPI); the MPI communicator still
 *                          carries the host collectives.
 *
 * Errors: a collective that fails or times out returns CT_ERUNTIME with a
 * message naming this rank, the operation and the cause; the caller then ends
 * the whole job with ct_dist_abort (never a hang: every wait is bounded).
 *
 * Ownership: ct_dist_init allocates the communicator; ct_dist_finalize frees
 * it (and finalizes MPI). Buffers are borrowed for a call. */
#ifndef CT_DIST_H
#define CT_DIST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "autograd/backend.h"

typedef enum { CT_DIST_F32, CT_DIST_F64, CT_DIST_I64 } ct_dist_type;

typedef struct ct_dist ct_dist;
typedef struct {
    const char *name; /* "single", "mpi" */
    /* In-place sum over the ranks of n elements of host memory. */
    int (*allreduce)(ct_dist *d, void *buf, size_t n, ct_dist_type type, const char *what);
    /* The same sum, only started: buf is the communicator's until finish_sums
     * returns. Every rank starts the same sums in the same order, and no
     * other collective runs while sums are in flight. */
    int (*start_sum)(ct_dist *d, void *buf, size_t n, ct_dist_type type, const char *what);
    /* Moves the sums in flight along without waiting (MPI advances a
     * non-blocking collective only inside MPI calls). */
    int (*progress)(ct_dist *d, const char *what);
    /* Waits for every sum in flight, at most timeout_s. */
    int (*finish_sums)(ct_dist *d, const char *what);
    /* Every rank's `bytes` of mine into all[rank * bytes] (all: world * bytes). */
    int (*allgather)(ct_dist *d, const void *mine, void *all, size_t bytes, const char *what);
    /* Rank 0's bytes of buf to every rank. */
    int (*bcast)(ct_dist *d, void *buf, size_t bytes, const char *what);
    /* Waits for every rank, at most timeout_s seconds. */
    int (*barrier)(ct_dist *d, double timeout_s, const char *what);
    /* Ends every process of the job with exit status `code` (does not return). */
    void (*abort)(ct_dist *d, int code);
    void (*finalize)(ct_dist *d);
} ct_dist_ops;

struct ct_dist {
    const ct_dist_ops *ops;
    int rank, world;             /* this process's rank in [0, world) */
    int local_rank, local_world; /* among the ranks of this node */
    double timeout_s;            /* the longest wait of a collective ($CTUNER_DIST_TIMEOUT, default 600) */
    char host[64];               /* this node's name (messages) */
    bool progress_thread;        /* MPI: a thread polls the sums in flight (dist_mpi.c) */
    void *impl;                  /* the implementation's state */
    /* NCCL for the cuda backend's buffers ($CTUNER_DIST_NCCL): 0 never (staged
     * through the host), 1 required (an error when it cannot start; with one
     * process, a communicator of one rank: the check of tests/gpu/run.sh),
     * 2 when every rank can load libnccl (the default with several ranks). */
    int nccl;
    bool nccl_tried; /* started (or found missing) at the first device all-reduce */
    char dev_note[640]; /* then: how device buffers are summed ("on the GPUs with NCCL 2.28.9", ...) */
    /* Device sums (NCCL) of backend memory, in flight beside the backend's
     * work: dev_start_f32 enqueues the sum of n floats after everything the
     * backend has enqueued so far; dev_finish waits for all started ones.
     * NULL when this build or run has none (device buffers are then staged
     * through the host). */
    int (*dev_start_f32)(ct_dist *d, float *dev, size_t n, const char *what);
    int (*dev_finish)(ct_dist *d, const char *what);
    void (*dev_finalize)(ct_dist *d);
    void *dev_impl;
};

/* The communicator of this process: MPI when a launcher started it (mpirun:
 * OMPI_COMM_WORLD_SIZE; PMI/PMIx: PMI_SIZE, PMI_RANK, PMIX_RANK; srun:
 * SLURM_STEP_NUM_TASKS > 1), else the single-process one. CT_EINPUT when a
 * launcher started it but this build has no MPI, or srun gave the tasks no
 * MPI wiring (world 1 of several tasks). */
int ct_dist_init(ct_dist **out);
/* The single-process communicator (static; finalize is a no-op). */
ct_dist *ct_dist_single(void);
void ct_dist_finalize(ct_dist *d); /* NULL ok */

/* Binds this rank to its device before any backend starts: device cuda
 * (or cuda-emu): the local_rank-th GPU (CUDA_VISIBLE_DEVICES narrowed to it,
 * unless the launcher already gave this rank exactly one); device cpu: its
 * share of the node's cores (OpenMP threads = the cores of its affinity mask
 * when the launcher bound it, else cores / local_world with the mask narrowed
 * to that slice; OMP_NUM_THREADS set by the user wins). One line describing
 * the binding into note. No-op for world 1. */
int ct_dist_bind(ct_dist *d, bool gpu, char *note, size_t cap);

/* Sums over the ranks of backend memory (the LoRA grads), whole or in pieces
 * started as they become ready (trainer/train_grad_sync.c). NCCL when be is
 * the cuda backend and d->nccl allows it, else staged through host memory:
 * `host` is the caller's buffer shadowing `buf` (same offsets; NULL only when
 * NCCL is required).
 *   ct_dist_backend_open  before the first sum, with none in flight: starts
 *                         NCCL the first time (a collective: every rank
 *                         calls it); sets d->dev_note;
 *   ct_dist_backend_start the sum of buf[off, off + n) (staged: downloaded
 *                         now, then started on the host);
 *   ct_dist_backend_progress  lets the sums in flight advance;
 *   ct_dist_backend_finish    waits for them all; staged: uploads host[lo, hi),
 *                         the span the started pieces cover.
 * ct_dist_allreduce_backend_f32 is all four over buf[0, n). */
int ct_dist_backend_open(ct_dist *d, const ct_backend *be);
int ct_dist_backend_start(ct_dist *d, const ct_backend *be, float *buf, float *host, size_t off, size_t n,
                          const char *what);
int ct_dist_backend_progress(ct_dist *d, const ct_backend *be, const char *what);
int ct_dist_backend_finish(ct_dist *d, const ct_backend *be, float *buf, float *host, size_t lo, size_t hi,
                           const char *what);
int ct_dist_allreduce_backend_f32(ct_dist *d, const ct_backend *be, float *buf, size_t n, float *host,
                                  const char *what);

/* Whether this build has MPI / NCCL. */
bool ct_dist_have_mpi(void);
bool ct_dist_have_nccl(void);

/* ---- implementations (dist_mpi.c, dist_nccl.c) ---- */
int ct_dist_mpi_init(ct_dist *d);
/* After ct_dist_bind on a cuda rank, once the backend is up: every rank
 * loads libnccl (*absent and a note saying why, CT_OK, when any rank cannot:
 * all stay on the host path), rank 0 makes the NCCL unique id, the host
 * communicator broadcasts it, every rank joins. CT_ERUNTIME naming the NCCL
 * error; "NCCL x.y.z" in note on success. */
int ct_dist_nccl_init(ct_dist *d, bool *absent, char *note, size_t cap);

#endif
