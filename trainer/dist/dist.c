/* The communicator's launcher detection, the single-process communicator,
 * the per-rank device binding and the staging of device buffers through the
 * host (trainer/dist/dist.h). */
#include <math.h>
#include <omp.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "autograd/ct_error.h"
#include "trainer/dist/dist.h"

bool ct_dist_have_mpi(void) {
#ifdef CT_HAVE_MPI
    return true;
#else
    return false;
#endif
}

bool ct_dist_have_nccl(void) {
#ifdef CT_HAVE_NCCL
    return true;
#else
    return false;
#endif
}

/* ---- the single-process communicator: every collective is the identity ---- */

static int single_allreduce(ct_dist *d, void *buf, size_t n, ct_dist_type type, const char *what) {
    (void)d, (void)buf, (void)n, (void)type, (void)what;
    return CT_OK;
}
static int single_progress(ct_dist *d, const char *what) {
    (void)d, (void)what;
    return CT_OK;
}
static int single_allgather(ct_dist *d, const void *mine, void *all, size_t bytes, const char *what) {
    (void)d, (void)what;
    if (all != mine) memmove(all, mine, bytes);
    return CT_OK;
}
static int single_bcast(ct_dist *d, void *buf, size_t bytes, const char *what) {
    (void)d, (void)buf, (void)bytes, (void)what;
    return CT_OK;
}
static int single_barrier(ct_dist *d, double timeout_s, const char *what) {
    (void)d, (void)timeout_s, (void)what;
    return CT_OK;
}
static void single_abort(ct_dist *d, int code) {
    (void)d;
    exit(code);
}
static void single_finalize(ct_dist *d) { (void)d; }

static const ct_dist_ops single_ops = {"single",       single_allreduce, single_allreduce, single_progress,
                                       single_progress, single_allgather, single_bcast,     single_barrier,
                                       single_abort,    single_finalize};
static ct_dist g_single = {.ops = &single_ops, .rank = 0, .world = 1, .local_rank = 0, .local_world = 1,
                           .timeout_s = 600, .host = "localhost"};

ct_dist *ct_dist_single(void) { return &g_single; }

#ifndef CT_HAVE_MPI
int ct_dist_mpi_init(ct_dist *d) {
    (void)d;
    return ct_errorf(CT_EINPUT, "this ctuner was built without MPI");
}
#endif
#ifndef CT_HAVE_NCCL
int ct_dist_nccl_init(ct_dist *d, bool *absent, char *note, size_t cap) {
    (void)d;
    *absent = true;
    snprintf(note, cap, "this ctuner was built without NCCL (nccl.h not found when it was configured)");
    return CT_OK;
}
#endif

/* $CTUNER_DIST_NCCL: 0, 1 or unset (auto: 2 with several ranks, else 0) */
static int nccl_mode(int world, int *mode) {
    const char *v = getenv("CTUNER_DIST_NCCL");
    if (!v || !v[0]) *mode = world > 1 ? 2 : 0;
    else if (strcmp(v, "0") == 0) *mode = 0;
    else if (strcmp(v, "1") == 0) *mode = 1;
    else return ct_errorf(CT_EINPUT, "CTUNER_DIST_NCCL=%s: expected 0 (never), 1 (required) or unset (when every "
                          "rank has libnccl)", v);
    return CT_OK;
}

/* ---- launcher detection ---- */

static long env_long(const char *name, long dflt) {
    const char *v = getenv(name);
    if (!v || !v[0]) return dflt;
    char *end;
    long x = strtol(v, &end, 10);
    return *end ? dflt : x;
}

/* A launcher that wires MPI ranks sets one of these. */
static bool launched(long *tasks) {
    static const char *const sizes[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "SLURM_STEP_NUM_TASKS"};
    *tasks = 1;
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        long n = env_long(sizes[i], 0);
        if (n > *tasks) *tasks = n;
    }
    return *tasks > 1 || getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMIX_RANK") || getenv("PMI_RANK");
}

int ct_dist_init(ct_dist **out) {
    *out = &g_single;
    long tasks = 1;
    if (!launched(&tasks)) return nccl_mode(1, &g_single.nccl);
    if (!ct_dist_have_mpi()) {
        if (tasks <= 1) return nccl_mode(1, &g_single.nccl); /* one process under a launcher: a plain run */
        return ct_errorf(CT_EINPUT, "started as one of %ld processes (mpirun/srun), but this ctuner was built without "
                         "MPI: install OpenMPI (Debian: openmpi-bin libopenmpi-dev) and rebuild, or run "
                         "`ctuner train` without the launcher", tasks);
    }
    ct_dist *d = calloc(1, sizeof *d);
    if (!d) return ct_errorf(CT_ERUNTIME, "out of memory");
    d->timeout_s = 600;
    const char *t = getenv("CTUNER_DIST_TIMEOUT");
    if (t && t[0]) {
        char *end;
        double v = strtod(t, &end);
        if (*end || !(v > 0) || !isfinite(v)) {
            free(d);
            return ct_errorf(CT_EINPUT, "CTUNER_DIST_TIMEOUT=%s: expected a number of seconds > 0", t);
        }
        d->timeout_s = v;
    }
    if (gethostname(d->host, sizeof d->host - 1) != 0) snprintf(d->host, sizeof d->host, "?");
    int rc = ct_dist_mpi_init(d);
    if (rc) {
        free(d);
        return rc;
    }
    if (d->world == 1 && tasks > 1) {
        d->ops->finalize(d);
        return ct_errorf(CT_EINPUT, "the launcher started %ld tasks but MPI sees a world of 1: each would train "
                         "alone into the same work_dir. Under Slurm use `srun --mpi=pmix` (or pmi2), or mpirun", tasks);
    }
    rc = nccl_mode(d->world, &d->nccl);
    if (rc) {
        d->ops->finalize(d);
        return rc;
    }
    *out = d;
    return CT_OK;
}

void ct_dist_finalize(ct_dist *d) {
    if (!d) return;
    if (d->dev_finalize) d->dev_finalize(d);
    if (d != &g_single) d->ops->finalize(d); /* frees d */
}

/* ---- binding a rank to its device ---- */

static void bind_gpu(ct_dist *d, char *note, size_t cap) {
    const char *v = getenv("CUDA_VISIBLE_DEVICES");
    char pick[64];
    if (v && v[0]) {
        /* the launcher's list: one entry is this rank's GPU already */
        int n = 1;
        for (const char *p = v; *p; p++) n += *p == ',';
        if (n == 1) {
            snprintf(note, cap, "GPU %s (CUDA_VISIBLE_DEVICES from the launcher)", v);
            return;
        }
        int want = d->local_rank % n, i = 0;
        const char *p = v;
        while (i < want) i += *p++ == ',';
        size_t len = strcspn(p, ",");
        snprintf(pick, sizeof pick, "%.*s", (int)(len < 60 ? len : 60), p);
    } else {
        snprintf(pick, sizeof pick, "%d", d->local_rank);
    }
    setenv("CUDA_VISIBLE_DEVICES", pick, 1);
    snprintf(note, cap, "GPU %s (local rank %d of %d)", pick, d->local_rank, d->local_world);
}

static void bind_cpu(ct_dist *d, char *note, size_t cap) {
    const char *omp = getenv("OMP_NUM_THREADS");
    if (omp && omp[0]) {
        snprintf(note, cap, "%s OpenMP threads (OMP_NUM_THREADS)", omp);
        return;
    }
    cpu_set_t mask;
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    if (sched_getaffinity(0, sizeof mask, &mask) != 0 || ncpu < 1) {
        snprintf(note, cap, "cores unknown: OpenMP default");
        return;
    }
    int have = CPU_COUNT(&mask);
    if (have < ncpu) { /* the launcher bound this rank: use what it gave */
        omp_set_num_threads(have);
        snprintf(note, cap, "%d cores (the launcher's binding)", have);
        return;
    }
    int share = have / (d->local_world > 0 ? d->local_world : 1);
    if (share < 1) { /* more ranks than cores: one thread each, no pinning */
        omp_set_num_threads(1);
        snprintf(note, cap, "1 thread (%d ranks share %d cores)", d->local_world, have);
        return;
    }
    cpu_set_t mine;
    CPU_ZERO(&mine);
    int first = d->local_rank * share, seen = 0, got = 0;
    for (int c = 0; c < CPU_SETSIZE && got < share; c++) {
        if (!CPU_ISSET(c, &mask)) continue;
        if (seen++ >= first) {
            CPU_SET(c, &mine);
            got++;
        }
    }
    if (got > 0) sched_setaffinity(0, sizeof mine, &mine);
    omp_set_num_threads(share);
    snprintf(note, cap, "%d cores (%d..%d of the node's %d)", share, first, first + share - 1, have);
}

int ct_dist_bind(ct_dist *d, bool gpu, char *note, size_t cap) {
    note[0] = '\0';
    if (d->world == 1) return CT_OK;
    char cpu[128];
    bind_cpu(d, cpu, sizeof cpu);
    if (gpu) {
        char g[128];
        bind_gpu(d, g, sizeof g);
        snprintf(note, cap, "%s, %s", g, cpu);
    } else {
        snprintf(note, cap, "%s", cpu);
    }
    return CT_OK;
}

/* The staged path sums on the host; NCCL sums device memory directly. */
static bool on_device(const ct_dist *d, const ct_backend *be) { return d->dev_start_f32 && be->device == CT_CUDA; }

int ct_dist_backend_open(ct_dist *d, const ct_backend *be) {
    const char *mpi = d->progress_thread ? " over MPI (a progress thread polls)" : d->world > 1 ? " over MPI" : "";
    if (be->device != CT_CUDA || !d->nccl || d->nccl_tried) {
        if (!d->dev_note[0])
            snprintf(d->dev_note, sizeof d->dev_note, "%s%s", be->device == CT_CUDA ? "staged through host memory "
                     "(CTUNER_DIST_NCCL=0)" : "in host memory", mpi);
        return CT_OK;
    }
    d->nccl_tried = true;
    bool absent = false;
    char note[560];
    CT_TRY(ct_dist_nccl_init(d, &absent, note, sizeof note));
    if (absent && d->nccl == 1) return ct_errorf(CT_EINPUT, "CTUNER_DIST_NCCL=1 but NCCL cannot start: %s", note);
    snprintf(d->dev_note, sizeof d->dev_note, "%s%s%s%s", absent ? "staged through host memory (no NCCL: "
             : "on the GPUs with ", note, absent ? ")" : "", absent ? mpi : "");
    return CT_OK;
}

int ct_dist_backend_start(ct_dist *d, const ct_backend *be, float *buf, float *host, size_t off, size_t n,
                          const char *what) {
    if (n == 0) return CT_OK;
    if (on_device(d, be)) return d->dev_start_f32(d, buf + off, n, what);
    if (d->world == 1) return CT_OK;
    CT_TRY(be->download(host + off, buf + off, n * sizeof *host));
    return d->ops->start_sum(d, host + off, n, CT_DIST_F32, what);
}

int ct_dist_backend_progress(ct_dist *d, const ct_backend *be, const char *what) {
    if (on_device(d, be) || d->world == 1) return CT_OK; /* (NCCL advances on its own) */
    return d->ops->progress(d, what);
}

int ct_dist_backend_finish(ct_dist *d, const ct_backend *be, float *buf, float *host, size_t lo, size_t hi,
                           const char *what) {
    if (on_device(d, be)) return d->dev_finish(d, what);
    if (d->world == 1 || hi <= lo) return CT_OK;
    CT_TRY(d->ops->finish_sums(d, what));
    return be->upload(buf + lo, host + lo, (hi - lo) * sizeof *host);
}

int ct_dist_allreduce_backend_f32(ct_dist *d, const ct_backend *be, float *buf, size_t n, float *host,
                                  const char *what) {
    if (n == 0) return CT_OK;
    CT_TRY(ct_dist_backend_open(d, be));
    CT_TRY(ct_dist_backend_start(d, be, buf, host, 0, n, what));
    return ct_dist_backend_finish(d, be, buf, host, 0, n, what);
}
