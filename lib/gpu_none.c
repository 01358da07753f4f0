/*
 * The GPU backend of a build without CUDA (INSITRA_ENABLE_CUDA=OFF): every
 * call says so, so device = cuda fails at trainer_create with a message
 * that tells the user how to get the backend.
 */
#include "gpu.h"

#include "error.h"

static insitra_status no_cuda(void)
{
    return insitra_error_set(INSITRA_STATUS_DEVICE_ERROR,
                             "config key 'device' is 'cuda', but this insitra was built without the "
                             "CUDA backend (configure with -DINSITRA_ENABLE_CUDA=ON, or Spack: "
                             "insitra+cuda); use device = cpu");
}

insitra_status insitra_gpu_create(insitra_gpu **gpu, struct insitra_trainer *t)
{
    (void)t;
    *gpu = NULL;
    return no_cuda();
}
insitra_status insitra_gpu_connect(insitra_gpu *gpu, struct insitra_trainer *t) { (void)gpu, (void)t; return no_cuda(); }
void insitra_gpu_free(insitra_gpu *gpu) { (void)gpu; }
insitra_status insitra_gpu_upload_state(insitra_gpu *gpu, struct insitra_trainer *t) { (void)gpu, (void)t; return no_cuda(); }
insitra_status insitra_gpu_download_state(insitra_gpu *gpu, struct insitra_trainer *t) { (void)gpu, (void)t; return no_cuda(); }
insitra_status insitra_gpu_store_samples(insitra_gpu *gpu, int64_t first, int64_t n, const float *x,
                                         const float *y)
{
    (void)gpu, (void)first, (void)n, (void)x, (void)y;
    return no_cuda();
}
insitra_status insitra_gpu_fetch_samples(insitra_gpu *gpu, int64_t first, int64_t n, float *store_x,
                                         float *store_y)
{
    (void)gpu, (void)first, (void)n, (void)store_x, (void)store_y;
    return no_cuda();
}
insitra_status insitra_gpu_first_nonfinite(insitra_gpu *gpu, const float *a, int64_t n, int64_t *index)
{
    (void)gpu, (void)a, (void)n, (void)index;
    return no_cuda();
}
bool insitra_gpu_is_device_pointer(const void *ptr) { (void)ptr; return false; }
insitra_status insitra_gpu_train_step(insitra_gpu *gpu, const int64_t *slots, int64_t t, double lr,
                                      double *loss, double *grad_norm)
{
    (void)gpu, (void)slots, (void)t, (void)lr, (void)loss, (void)grad_norm;
    return no_cuda();
}
insitra_status insitra_gpu_forward(insitra_gpu *gpu, int64_t n, int64_t chunks, const float *x,
                                   const float *y, float *y_out, double *sse)
{
    (void)gpu, (void)n, (void)chunks, (void)x, (void)y, (void)y_out, (void)sse;
    return no_cuda();
}
insitra_status insitra_gpu_memory(const insitra_gpu *gpu, insitra_memory_usage *usage)
{
    (void)gpu, (void)usage;
    return no_cuda();
}
