#include "comm.h"

#include <stdlib.h>
#include <string.h>

#include "error.h"

static insitra_status mpi_error(int rc, const char *what)
{
    char text[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, text, &len);
    return insitra_error_set(INSITRA_STATUS_MPI_ERROR, "%s failed: %s", what, text);
}

static insitra_status finish_setup(insitra_comm *c)
{
    MPI_Comm_rank(c->comm, &c->rank);
    MPI_Comm_size(c->comm, &c->size);
    c->gathered = malloc((size_t)c->size * INSITRA_COMM_SUM_MAX * sizeof(double));
    if (!c->gathered)
        return insitra_error_set(INSITRA_STATUS_OUT_OF_MEMORY, "communicator: out of memory");
    return INSITRA_STATUS_OK;
}

insitra_status insitra_comm_create(insitra_comm *c, MPI_Comm parent)
{
    c->comm = MPI_COMM_NULL;
    c->gathered = NULL;
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
    return finish_setup(c);
}

insitra_status insitra_comm_split(const insitra_comm *parent, int color, int key, insitra_comm *c)
{
    c->gathered = NULL;
    int rc = MPI_Comm_split(parent->comm, color, key, &c->comm);
    if (rc != MPI_SUCCESS) return mpi_error(rc, "MPI_Comm_split");
    MPI_Comm_set_errhandler(c->comm, MPI_ERRORS_RETURN);
    return finish_setup(c);
}

void insitra_comm_free(insitra_comm *c)
{
    if (c->comm != MPI_COMM_NULL) MPI_Comm_free(&c->comm);
    c->comm = MPI_COMM_NULL;
    free(c->gathered);
    c->gathered = NULL;
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

insitra_status insitra_comm_sum_ordered(const insitra_comm *c, double *v, int n)
{
    int rc = MPI_Allgather(v, n, MPI_DOUBLE, c->gathered, n, MPI_DOUBLE, c->comm);
    if (rc != MPI_SUCCESS) return mpi_error(rc, "MPI_Allgather (ordered sum)");
    for (int i = 0; i < n; i++) {
        double s = 0.0;
        for (int r = 0; r < c->size; r++) s += c->gathered[r * n + i];
        v[i] = s;
    }
    return INSITRA_STATUS_OK;
}

insitra_status insitra_comm_max_int64(const insitra_comm *c, int64_t *v)
{
    int rc = MPI_Allreduce(MPI_IN_PLACE, v, 1, MPI_INT64_T, MPI_MAX, c->comm);
    return rc == MPI_SUCCESS ? INSITRA_STATUS_OK : mpi_error(rc, "MPI_Allreduce (max)");
}

