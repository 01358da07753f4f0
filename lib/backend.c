/* Picking a backend by the config's device key. */
#include "backend.h"

#include "cpu/gemm.h"
#include "error.h"

const insitra_backend_desc *insitra_backend_desc_for(int device)
{
    return device == INSITRA_DEVICE_CUDA ? &insitra_backend_cuda_desc : &insitra_backend_cpu_desc;
}

insitra_status insitra_backend_create(insitra_backend **be, const insitra_config *cfg, MPI_Comm comm)
{
    *be = NULL;
    if (cfg->device == INSITRA_DEVICE_CUDA) return insitra_backend_cuda_create(be, cfg, comm);
    INSITRA_CHECK(insitra_backend_cpu_create(be));
    int rank = 0;
    MPI_Comm_rank(comm, &rank);
    insitra_gemm_warn_narrow(rank); /* a word on stderr, nothing changed */
    return INSITRA_STATUS_OK;
}

void insitra_backend_free(insitra_backend *be)
{
    if (be) be->i->free(be);
}
