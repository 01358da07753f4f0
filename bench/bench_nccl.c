/*
 * Raw NCCL bandwidth on this node: the yardstick for insitra's collectives.
 *
 *   mpiexec -n G bench_nccl [bytes ...]
 *
 * One MPI rank per GPU. A rank's GPU is its rank within the node
 * (MPI_Comm_split_type with MPI_COMM_TYPE_SHARED); rank 0 makes the NCCL
 * unique id and MPI_Bcast hands it to the others, then every rank calls
 * ncclCommInitRank. For every size (default 8 MiB, 64 MiB, 256 MiB and 1 GiB
 * of float32; a size may carry a K, M or G suffix, powers of 1024) it times
 * ncclAllReduce (sum), ncclReduceScatter (sum) and ncclAllGather on one
 * stream, out of place: 5 untimed calls, then 20 calls each between a pair
 * of cudaEvents. A call's time is the slowest rank's; the figure is the
 * median over the 20 calls. One line per operation and size:
 *
 *   nccl op=allreduce ranks=2 bytes=... ms=... algbw_gbs=... busbw_gbs=...
 *
 * bytes is the size of the whole vector: what each rank reduces for
 * allreduce, what it holds before a reduce-scatter and after an all-gather
 * (each rank's piece is bytes / ranks). algbw = bytes / time, in 1e9 bytes
 * per second; busbw scales it to the traffic through the busiest link of a
 * ring, as nccl-tests does: x 2(n-1)/n for allreduce, x (n-1)/n for
 * reduce-scatter and all-gather. Any failed CUDA, NCCL or MPI call prints
 * what failed and on which rank, and aborts the job.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>
#include <mpi.h>
#include <nccl.h>

enum { WARMUP_CALLS = 5, TIMED_CALLS = 20 };

static int world_rank = 0;

static void fail(const char *file, int line, const char *what, const char *why)
{
    fprintf(stderr, "bench_nccl: rank %d: %s:%d: %s failed: %s\n", world_rank, file, line, what,
            why);
    fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, 1);
    exit(EXIT_FAILURE); /* not reached */
}

#define CUDA_CHECK(call)                                                                       \
    do {                                                                                       \
        cudaError_t cuda_status_ = (call);                                                     \
        if (cuda_status_ != cudaSuccess)                                                       \
            fail(__FILE__, __LINE__, #call, cudaGetErrorString(cuda_status_));                 \
    } while (0)

/* comm may be NULL before the communicator exists. */
static void nccl_fail(const char *file, int line, const char *what, ncclResult_t status,
                      ncclComm_t comm)
{
    char why[512];
    const char *last = ncclGetLastError(comm);
    snprintf(why, sizeof why, "%s%s%s", ncclGetErrorString(status),
             last && *last ? ": " : "", last ? last : "");
    fail(file, line, what, why);
}

#define NCCL_CHECK(call, comm)                                                                 \
    do {                                                                                       \
        ncclResult_t nccl_status_ = (call);                                                    \
        if (nccl_status_ != ncclSuccess)                                                       \
            nccl_fail(__FILE__, __LINE__, #call, nccl_status_, (comm));                        \
    } while (0)

#define MPI_CHECK(call)                                                                        \
    do {                                                                                       \
        int mpi_status_ = (call);                                                              \
        if (mpi_status_ != MPI_SUCCESS) {                                                      \
            char mpi_why_[MPI_MAX_ERROR_STRING];                                               \
            int mpi_len_ = 0;                                                                  \
            MPI_Error_string(mpi_status_, mpi_why_, &mpi_len_);                                \
            fail(__FILE__, __LINE__, #call, mpi_why_);                                         \
        }                                                                                      \
    } while (0)

typedef enum { OP_ALLREDUCE, OP_REDUCE_SCATTER, OP_ALL_GATHER, OP_COUNT } bench_op;

static const char *const op_names[OP_COUNT] = {"allreduce", "reducescatter", "allgather"};

static int compare_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median_of(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, compare_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* "67108864", "64M", "64MiB", "1G": bytes, or 0 if the text is not a size. */
static size_t parse_size(const char *text)
{
    char *end = NULL;
    unsigned long long v = strtoull(text, &end, 10);
    if (end == text || text[0] == '-')
        return 0;
    unsigned long long scale = 1;
    switch (*end) {
    case 'k': case 'K': scale = 1ULL << 10; end++; break;
    case 'm': case 'M': scale = 1ULL << 20; end++; break;
    case 'g': case 'G': scale = 1ULL << 30; end++; break;
    default: break;
    }
    if (scale > 1 && (strcmp(end, "iB") == 0 || strcmp(end, "B") == 0))
        end += strlen(end);
    if (*end != '\0' || v == 0 || v > (1ULL << 40) / scale)
        return 0;
    return (size_t)(v * scale);
}

/* Enqueues one call of op on stream. count is the whole vector, in floats,
 * a multiple of nranks. */
static void enqueue(bench_op op, const float *send, float *recv, size_t count, int nranks,
                    ncclComm_t comm, cudaStream_t stream)
{
    switch (op) {
    case OP_ALLREDUCE:
        NCCL_CHECK(ncclAllReduce(send, recv, count, ncclFloat, ncclSum, comm, stream), comm);
        break;
    case OP_REDUCE_SCATTER: /* send: count floats; recv: this rank's count / nranks */
        NCCL_CHECK(ncclReduceScatter(send, recv, count / (size_t)nranks, ncclFloat, ncclSum, comm,
                                     stream),
                   comm);
        break;
    case OP_ALL_GATHER: /* send: count / nranks floats; recv: count */
        NCCL_CHECK(ncclAllGather(send, recv, count / (size_t)nranks, ncclFloat, comm, stream),
                   comm);
        break;
    default:
        break;
    }
}

/* Waits for stream and fails if NCCL reported an asynchronous error. */
static void finish(ncclComm_t comm, cudaStream_t stream)
{
    CUDA_CHECK(cudaStreamSynchronize(stream));
    ncclResult_t async_status = ncclSuccess;
    NCCL_CHECK(ncclCommGetAsyncError(comm, &async_status), comm);
    if (async_status != ncclSuccess)
        nccl_fail(__FILE__, __LINE__, "an NCCL collective (asynchronous error)", async_status,
                  comm);
}

/* Median over the timed calls of the slowest rank's time, in seconds. */
static double time_op(bench_op op, const float *send, float *recv, size_t count, int nranks,
                      ncclComm_t comm, cudaStream_t stream, cudaEvent_t *events)
{
    for (int i = 0; i < WARMUP_CALLS; i++)
        enqueue(op, send, recv, count, nranks, comm, stream);
    finish(comm, stream);
    MPI_CHECK(MPI_Barrier(MPI_COMM_WORLD));

    /* events[i] and events[i + 1] bracket call i. */
    CUDA_CHECK(cudaEventRecord(events[0], stream));
    for (int i = 0; i < TIMED_CALLS; i++) {
        enqueue(op, send, recv, count, nranks, comm, stream);
        CUDA_CHECK(cudaEventRecord(events[i + 1], stream));
    }
    finish(comm, stream);

    double seconds[TIMED_CALLS];
    for (int i = 0; i < TIMED_CALLS; i++) {
        float ms = 0.0f;
        CUDA_CHECK(cudaEventElapsedTime(&ms, events[i], events[i + 1]));
        seconds[i] = 1e-3 * (double)ms;
    }
    MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, seconds, TIMED_CALLS, MPI_DOUBLE, MPI_MAX,
                            MPI_COMM_WORLD));
    return median_of(seconds, TIMED_CALLS);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int nranks = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &nranks);

    static const size_t default_sizes[] = {8u << 20, 64u << 20, 256u << 20, 1u << 30};
    int nsizes = argc > 1 ? argc - 1 : (int)(sizeof default_sizes / sizeof default_sizes[0]);
    size_t *sizes = malloc((size_t)nsizes * sizeof *sizes);
    if (!sizes)
        fail(__FILE__, __LINE__, "malloc", "out of memory");
    size_t max_count = 0;
    for (int i = 0; i < nsizes; i++) {
        size_t bytes = argc > 1 ? parse_size(argv[i + 1]) : default_sizes[i];
        if (bytes == 0) {
            if (world_rank == 0)
                fprintf(stderr,
                        "usage: mpiexec -n G bench_nccl [bytes ...]   (e.g. 67108864, 64M, 1G; "
                        "default 8M 64M 256M 1G)\nbench_nccl: '%s' is not a size in bytes\n",
                        argv[i + 1]);
            MPI_Finalize();
            return EXIT_FAILURE;
        }
        /* Whole floats, and a multiple of the rank count so that every rank
         * gets an equal piece in reduce-scatter and all-gather. */
        size_t count = bytes / sizeof(float) / (size_t)nranks * (size_t)nranks;
        if (count == 0)
            count = (size_t)nranks;
        sizes[i] = count;
        if (count > max_count)
            max_count = count;
    }

    /* This rank's GPU: its rank among the ranks of this node. */
    MPI_Comm node;
    int local_rank = 0, local_size = 1, ndevices = 0;
    MPI_CHECK(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, world_rank,
                                  MPI_INFO_NULL, &node));
    MPI_CHECK(MPI_Comm_rank(node, &local_rank));
    MPI_CHECK(MPI_Comm_size(node, &local_size));
    MPI_CHECK(MPI_Comm_free(&node));
    CUDA_CHECK(cudaGetDeviceCount(&ndevices));
    if (local_rank >= ndevices) {
        char why[160];
        snprintf(why, sizeof why,
                 "%d ranks on this node but only %d visible GPUs (one rank per GPU)", local_size,
                 ndevices);
        fail(__FILE__, __LINE__, "choosing a GPU", why);
    }
    CUDA_CHECK(cudaSetDevice(local_rank));

    ncclUniqueId id;
    memset(&id, 0, sizeof id);
    if (world_rank == 0)
        NCCL_CHECK(ncclGetUniqueId(&id), NULL);
    MPI_CHECK(MPI_Bcast(&id, (int)sizeof id, MPI_BYTE, 0, MPI_COMM_WORLD));
    ncclComm_t comm = NULL;
    NCCL_CHECK(ncclCommInitRank(&comm, nranks, id, world_rank), NULL);

    cudaStream_t stream;
    CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    cudaEvent_t events[TIMED_CALLS + 1];
    for (int i = 0; i <= TIMED_CALLS; i++)
        CUDA_CHECK(cudaEventCreate(&events[i]));
    float *send = NULL, *recv = NULL;
    CUDA_CHECK(cudaMalloc((void **)&send, max_count * sizeof(float)));
    CUDA_CHECK(cudaMalloc((void **)&recv, max_count * sizeof(float)));
    CUDA_CHECK(cudaMemset(send, 0, max_count * sizeof(float)));
    CUDA_CHECK(cudaMemset(recv, 0, max_count * sizeof(float)));
    CUDA_CHECK(cudaDeviceSynchronize());

    if (world_rank == 0) {
        int version = 0;
        struct cudaDeviceProp prop;
        NCCL_CHECK(ncclGetVersion(&version), comm);
        CUDA_CHECK(cudaGetDeviceProperties(&prop, local_rank));
        const char *nvls = getenv("NCCL_NVLS_ENABLE");
        printf("nccl_setup ranks=%d nccl_version=%d device=\"%s\" NCCL_NVLS_ENABLE=%s "
               "warmup=%d timed=%d\n",
               nranks, version, prop.name, nvls ? nvls : "unset", WARMUP_CALLS, TIMED_CALLS);
        fflush(stdout);
    }

    double n = (double)nranks;
    for (int s = 0; s < nsizes; s++) {
        for (int op = 0; op < OP_COUNT; op++) {
            double t = time_op((bench_op)op, send, recv, sizes[s], nranks, comm, stream, events);
            double bytes = (double)(sizes[s] * sizeof(float));
            double algbw = bytes / t * 1e-9;
            double factor = op == OP_ALLREDUCE ? 2.0 * (n - 1.0) / n : (n - 1.0) / n;
            if (world_rank == 0) {
                printf("nccl op=%s ranks=%d bytes=%.0f ms=%.4f algbw_gbs=%.2f busbw_gbs=%.2f\n",
                       op_names[op], nranks, bytes, 1e3 * t, algbw, algbw * factor);
                fflush(stdout);
            }
        }
    }

    CUDA_CHECK(cudaFree(send));
    CUDA_CHECK(cudaFree(recv));
    for (int i = 0; i <= TIMED_CALLS; i++)
        CUDA_CHECK(cudaEventDestroy(events[i]));
    CUDA_CHECK(cudaStreamDestroy(stream));
    NCCL_CHECK(ncclCommFinalize(comm), comm);
    NCCL_CHECK(ncclCommDestroy(comm), NULL);
    free(sizes);
    MPI_Finalize();
    return EXIT_SUCCESS;
}
