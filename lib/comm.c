#include "comm.h"

#include <limits.h>
#include <string.h>

#include "error.h"

static insitra_status mpi_error(int rc, const char *what)
{
    char text[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, text, &len);
    return insitra_error_set(INSITRA_STATUS_MPI_ERROR, "%s failed: %s", what, text);
}

insitra_status insitra_comm_create(insitra_comm *c, MPI_Comm parent)
{
    int initialized = 0, finalized = 0;
    MPI_Initialized(&initialized);
    MPI_Finalized(&finalized);
    if (!initialized || finalized)
        return insitra_error_set(INSITRA_STATUS_MPI_ERROR,
                                 "MPI is not initialized (call MPI_Init before creating a trainer)");
    if (parent == MPI_COMM_NULL)
        return insitra_error_set(INSITRA_STATUS_INVALID_ARGUMENT, "communicator is MPI_COMM_NULL");
    int rc = MPI_Comm_dup(parent, &c->comm);
    if (rc != MPI_SUCCESS) return mpi_error(rc, "MPI_Comm_dup");
    /* Our own communicator reports errors to us instead of aborting the job. */
    MPI_Comm_set_errhandler(c->comm, MPI_ERRORS_RETURN);
    MPI_Comm_rank(c->comm, &c->rank);
    MPI_Comm_size(c->comm, &c->size);
    return INSITRA_STATUS_OK;
}

void insitra_comm_free(insitra_comm *c)
{
    if (c->comm != MPI_COMM_NULL) MPI_Comm_free(&c->comm);
    c->comm = MPI_COMM_NULL;
}

insitra_status insitra_comm_agree(const insitra_comm *c, insitra_status local)
{
    int mine = local == INSITRA_STATUS_OK ? c->size : c->rank, first = c->size;
    int rc = MPI_Allreduce(&mine, &first, 1, MPI_INT, MPI_MIN, c->comm);
    if (rc != MPI_SUCCESS) return mpi_error(rc, "MPI_Allreduce (error agreement)");
    if (first == c->size) return INSITRA_STATUS_OK;

    struct { int status; char text[INSITRA_ERROR_MAX]; } msg = {0};
    if (c->rank == first) {
        msg.status = (int)local;
        strncpy(msg.text, insitra_last_error(), sizeof msg.text - 1);
    }
    rc = MPI_Bcast(&msg, (int)sizeof msg, MPI_BYTE, first, c->comm);
    if (rc != MPI_SUCCESS) return mpi_error(rc, "MPI_Bcast (error agreement)");
    if (c->rank == first) return insitra_error_prefix(local, "rank %d: ", c->rank);
    /* A second failing rank's own message is replaced: the first one is reported everywhere. */
    return insitra_error_set(INSITRA_STATUS_REMOTE_ERROR, "rank %d failed (%s): %s", first,
                             insitra_status_name((insitra_status)msg.status), msg.text);
}

insitra_status insitra_comm_sum_doubles(const insitra_comm *c, double *v, int n)
{
    int rc = MPI_Allreduce(MPI_IN_PLACE, v, n, MPI_DOUBLE, MPI_SUM, c->comm);
    return rc == MPI_SUCCESS ? INSITRA_STATUS_OK : mpi_error(rc, "MPI_Allreduce (double sum)");
}

insitra_status insitra_comm_sum_floats(const insitra_comm *c, float *v, int64_t n)
{
    /* MPI counts are int: large buffers go in pieces. */
    for (int64_t off = 0; off < n; off += INT_MAX / 2) {
        const int64_t len = n - off < INT_MAX / 2 ? n - off : INT_MAX / 2;
        int rc = MPI_Allreduce(MPI_IN_PLACE, v + off, (int)len, MPI_FLOAT, MPI_SUM, c->comm);
        if (rc != MPI_SUCCESS) return mpi_error(rc, "MPI_Allreduce (gradients)");
    }
    return INSITRA_STATUS_OK;
}
