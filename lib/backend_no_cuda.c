/* A build without the CUDA backend (INSITRA_ENABLE_CUDA=OFF): device = cuda
 * is a clear error at trainer creation. */
#include "backend.h"
#include "error.h"

insitra_status insitra_backend_cuda_create(insitra_backend **be, const insitra_config *cfg, MPI_Comm comm)
{
    (void)cfg;
    (void)comm;
    *be = NULL;
    return insitra_error_set(INSITRA_STATUS_DEVICE_ERROR,
                             "config key 'device' is 'cuda', but this insitra was built without the "
                             "CUDA backend (configure with -DINSITRA_ENABLE_CUDA=ON, or Spack: "
                             "insitra+cuda); use device = cpu");
}
