/*
 * cuDNN SDPA through the backend graph API (see attention_cudnn.cuh).
 *
 * cuDNN recognises fused attention by the shape of an operation graph of
 * matmuls, pointwise ops and row reductions (the graph the cudnn-frontend
 * builds for its SDPA node on cuDNN 9 before the dedicated SDPA operation
 * descriptors): forward
 *   S = Q K^T * scale [causal: -inf where col > row]
 *   m = rowmax S, e = exp(S - m), l = rowsum e, stats = m + log l
 *   O = (e / l) V
 * and backward
 *   sum = rowsum(dO * O)
 *   E = exp(Q K^T * scale - stats) [causal mask before the exp]
 *   dV = E^T dO;  dS = (dO V^T - sum) * E * scale
 *   dK = dS^T Q;  dQ = dS K
 * Every tensor of the graph is a descriptor with a unique id; the ones with
 * data (not virtual) get their pointers at execution through a variant pack.
 */
#include <cudnn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <limits>

#include "attention_cudnn.cuh"
#include "cuda_util.h"

namespace {

using desc_t = cudnnBackendDescriptor_t;

/* Ids of the tensors with data. */
enum : int64_t {
    UID_Q = 1, UID_K, UID_V, UID_O, UID_STATS, UID_DO, UID_DQ, UID_DK, UID_DV,
    UID_SCALE, UID_NEG_INF, UID_ONE, UID_SUM, UID_DQ_ACCUM,
    UID_VIRTUAL0 = 100 /* virtual tensors count up from here */
};

/* One operation graph under construction: every descriptor it creates is
 * kept for freeing; the first failing call is remembered with its place. */
struct builder {
    desc_t all[160];
    int n_all = 0;
    desc_t ops[48];
    int n_ops = 0;
    int64_t next_uid = UID_VIRTUAL0;
    cudnnStatus_t st = CUDNN_STATUS_SUCCESS;
    char where[96] = "";

    desc_t make(cudnnBackendDescriptorType_t t)
    {
        desc_t d = nullptr;
        if (st != CUDNN_STATUS_SUCCESS) return nullptr;
        if (n_all == (int)(sizeof all / sizeof all[0])) {
            st = CUDNN_STATUS_INTERNAL_ERROR, snprintf(where, sizeof where, "too many descriptors");
            return nullptr;
        }
        cudnnStatus_t s = cudnnBackendCreateDescriptor(t, &d);
        if (s != CUDNN_STATUS_SUCCESS) {
            st = s, snprintf(where, sizeof where, "create descriptor type %d", (int)t);
            return nullptr;
        }
        all[n_all++] = d;
        return d;
    }
    void set(desc_t d, cudnnBackendAttributeName_t n, cudnnBackendAttributeType_t t, int64_t count, const void *v)
    {
        if (st != CUDNN_STATUS_SUCCESS) return;
        cudnnStatus_t s = cudnnBackendSetAttribute(d, n, t, count, v);
        if (s != CUDNN_STATUS_SUCCESS) st = s, snprintf(where, sizeof where, "set attribute %d", (int)n);
    }
    void finish(desc_t d, const char *what)
    {
        if (st != CUDNN_STATUS_SUCCESS) return;
        cudnnStatus_t s = cudnnBackendFinalize(d);
        if (s != CUDNN_STATUS_SUCCESS) st = s, snprintf(where, sizeof where, "finalize %s", what);
    }
    void set_desc(desc_t d, cudnnBackendAttributeName_t n, desc_t v)
    {
        set(d, n, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &v);
    }

    /* A 4-d tensor; uid 0 makes a virtual one with the next free id. */
    desc_t tensor(int64_t uid, cudnnDataType_t type, const int64_t dim[4], const int64_t stride[4],
                  bool by_value = false)
    {
        desc_t t = make(CUDNN_BACKEND_TENSOR_DESCRIPTOR);
        const bool is_virtual = uid == 0;
        if (is_virtual) uid = next_uid++;
        const int64_t align = 16;
        set(t, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &type);
        set(t, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, 4, dim);
        set(t, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, 4, stride);
        set(t, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid);
        set(t, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &align);
        set(t, CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &is_virtual);
        if (by_value) set(t, CUDNN_ATTR_TENSOR_IS_BY_VALUE, CUDNN_TYPE_BOOLEAN, 1, &by_value);
        finish(t, "tensor");
        return t;
    }
    desc_t scalar(int64_t uid)
    {
        const int64_t one[4] = {1, 1, 1, 1};
        return tensor(uid, CUDNN_DATA_FLOAT, one, one, true);
    }

    void add_op(desc_t op, const char *what)
    {
        finish(op, what);
        if (st == CUDNN_STATUS_SUCCESS) ops[n_ops++] = op;
    }
    /* y = mode(x[, b][, t]) in precision prec; axis for GEN_INDEX. */
    void pointwise(cudnnPointwiseMode_t mode, desc_t x, desc_t b, desc_t t, desc_t y,
                   cudnnDataType_t prec = CUDNN_DATA_FLOAT, int64_t axis = -1)
    {
        desc_t pw = make(CUDNN_BACKEND_POINTWISE_DESCRIPTOR);
        set(pw, CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode);
        set(pw, CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, 1, &prec);
        if (axis >= 0) set(pw, CUDNN_ATTR_POINTWISE_AXIS, CUDNN_TYPE_INT64, 1, &axis);
        finish(pw, "pointwise");
        desc_t op = make(CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR);
        set_desc(op, CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, pw);
        set_desc(op, CUDNN_ATTR_OPERATION_POINTWISE_XDESC, x);
        if (b) set_desc(op, CUDNN_ATTR_OPERATION_POINTWISE_BDESC, b);
        if (t) set_desc(op, CUDNN_ATTR_OPERATION_POINTWISE_TDESC, t);
        set_desc(op, CUDNN_ATTR_OPERATION_POINTWISE_YDESC, y);
        add_op(op, "pointwise operation");
    }
    void matmul(desc_t a, desc_t b, desc_t c)
    {
        const cudnnDataType_t comp = CUDNN_DATA_FLOAT;
        desc_t mm = make(CUDNN_BACKEND_MATMUL_DESCRIPTOR);
        set(mm, CUDNN_ATTR_MATMUL_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &comp);
        finish(mm, "matmul");
        desc_t op = make(CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR);
        set_desc(op, CUDNN_ATTR_OPERATION_MATMUL_ADESC, a);
        set_desc(op, CUDNN_ATTR_OPERATION_MATMUL_BDESC, b);
        set_desc(op, CUDNN_ATTR_OPERATION_MATMUL_CDESC, c);
        set_desc(op, CUDNN_ATTR_OPERATION_MATMUL_DESC, mm);
        add_op(op, "matmul operation");
    }
    void reduction(cudnnReduceTensorOp_t mode, desc_t x, desc_t y)
    {
        const cudnnDataType_t comp = CUDNN_DATA_FLOAT;
        desc_t r = make(CUDNN_BACKEND_REDUCTION_DESCRIPTOR);
        set(r, CUDNN_ATTR_REDUCTION_OPERATOR, CUDNN_TYPE_REDUCTION_OPERATOR_TYPE, 1, &mode);
        set(r, CUDNN_ATTR_REDUCTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &comp);
        finish(r, "reduction");
        desc_t op = make(CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR);
        set_desc(op, CUDNN_ATTR_OPERATION_REDUCTION_XDESC, x);
        set_desc(op, CUDNN_ATTR_OPERATION_REDUCTION_YDESC, y);
        set_desc(op, CUDNN_ATTR_OPERATION_REDUCTION_DESC, r);
        add_op(op, "reduction operation");
    }
    void reshape(desc_t x, desc_t y)
    {
        desc_t op = make(CUDNN_BACKEND_OPERATION_RESHAPE_DESCRIPTOR);
        set_desc(op, CUDNN_ATTR_OPERATION_RESHAPE_XDESC, x);
        set_desc(op, CUDNN_ATTR_OPERATION_RESHAPE_YDESC, y);
        add_op(op, "reshape operation");
    }

    void release()
    {
        for (int i = n_all - 1; i >= 0; i--) cudnnBackendDestroyDescriptor(all[i]);
        n_all = n_ops = 0;
    }
};

/* The strided views of one shape. */
struct views {
    int64_t B, T, H, D, C;
    int64_t qkv_stride[4], o_stride[4], kt_stride[4], row_stride[4], tt_stride[4], ttT_stride[4];
    int64_t bhtd[4], bhdt[4], bht1[4], bhtt[4];
    explicit views(const insitra_attention_shape *sh)
        : B(sh->B), T(sh->T), H(sh->H), D(sh->C / sh->H), C(sh->C),
          qkv_stride{T * 3 * C, D, 3 * C, 1}, o_stride{T * C, D, C, 1}, kt_stride{T * 3 * C, D, 1, 3 * C},
          row_stride{H * T, T, 1, 1}, tt_stride{H * T * T, T * T, T, 1}, ttT_stride{H * T * T, T * T, 1, T},
          bhtd{B, H, T, D}, bhdt{B, H, D, T}, bht1{B, H, T, 1}, bhtt{B, H, T, T}
    {
    }
};

/* [causal] y = x where col <= row, -inf elsewhere; else x. */
desc_t causal_mask(builder &g, const views &v, desc_t x, bool causal)
{
    if (!causal) return x;
    desc_t row = g.tensor(0, CUDNN_DATA_INT32, v.bhtt, v.tt_stride);
    desc_t col = g.tensor(0, CUDNN_DATA_INT32, v.bhtt, v.tt_stride);
    desc_t keep = g.tensor(0, CUDNN_DATA_BOOLEAN, v.bhtt, v.tt_stride);
    desc_t y = g.tensor(0, CUDNN_DATA_FLOAT, v.bhtt, v.tt_stride);
    g.pointwise(CUDNN_POINTWISE_GEN_INDEX, x, nullptr, nullptr, row, CUDNN_DATA_INT32, 2);
    g.pointwise(CUDNN_POINTWISE_GEN_INDEX, x, nullptr, nullptr, col, CUDNN_DATA_INT32, 3);
    g.pointwise(CUDNN_POINTWISE_CMP_GE, row, col, nullptr, keep, CUDNN_DATA_BOOLEAN);
    g.pointwise(CUDNN_POINTWISE_BINARY_SELECT, x, g.scalar(UID_NEG_INF), keep, y);
    return y;
}

void build_forward(builder &g, const views &v, bool causal)
{
    const cudnnDataType_t io = CUDNN_DATA_BFLOAT16, f32 = CUDNN_DATA_FLOAT;
    desc_t q = g.tensor(UID_Q, io, v.bhtd, v.qkv_stride);
    desc_t kt = g.tensor(UID_K, io, v.bhdt, v.kt_stride);
    desc_t val = g.tensor(UID_V, io, v.bhtd, v.qkv_stride);
    desc_t o = g.tensor(UID_O, io, v.bhtd, v.o_stride);
    desc_t stats = g.tensor(UID_STATS, f32, v.bht1, v.row_stride);

    desc_t s = g.tensor(0, f32, v.bhtt, v.tt_stride);
    g.matmul(q, kt, s);
    desc_t ss = g.tensor(0, f32, v.bhtt, v.tt_stride);
    g.pointwise(CUDNN_POINTWISE_MUL, s, g.scalar(UID_SCALE), nullptr, ss);
    desc_t sm = causal_mask(g, v, ss, causal);
    desc_t mx = g.tensor(0, f32, v.bht1, v.row_stride);
    g.reduction(CUDNN_REDUCE_TENSOR_MAX, sm, mx);
    desc_t sub = g.tensor(0, f32, v.bhtt, v.tt_stride);
    g.pointwise(CUDNN_POINTWISE_SUB, sm, mx, nullptr, sub);
    desc_t e = g.tensor(0, f32, v.bhtt, v.tt_stride);
    g.pointwise(CUDNN_POINTWISE_EXP, sub, nullptr, nullptr, e);
    desc_t l = g.tensor(0, f32, v.bht1, v.row_stride);
    g.reduction(CUDNN_REDUCE_TENSOR_ADD, e, l);
    desc_t lg = g.tensor(0, f32, v.bht1, v.row_stride);
    g.pointwise(CUDNN_POINTWISE_LOG, l, nullptr, nullptr, lg);
    g.pointwise(CUDNN_POINTWISE_ADD, mx, lg, nullptr, stats);
    desc_t p = g.tensor(0, io, v.bhtt, v.tt_stride);
    g.pointwise(CUDNN_POINTWISE_DIV, e, l, nullptr, p);
    g.matmul(p, val, o);
}

void build_backward(builder &g, const views &v, bool causal, bool deterministic)
{
    const cudnnDataType_t io = CUDNN_DATA_BFLOAT16, f32 = CUDNN_DATA_FLOAT;
    desc_t q = g.tensor(UID_Q, io, v.bhtd, v.qkv_stride);
    desc_t kt = g.tensor(UID_K, io, v.bhdt, v.kt_stride);
    desc_t vt = g.tensor(UID_V, io, v.bhdt, v.kt_stride);
    desc_t o = g.tensor(UID_O, io, v.bhtd, v.o_stride);
    desc_t stats = g.tensor(UID_STATS, f32, v.bht1, v.row_stride);
    desc_t dout = g.tensor(UID_DO, io, v.bhtd, v.o_stride);
    desc_t dq = g.tensor(UID_DQ, io, v.bhtd, v.qkv_stride);
    desc_t dk = g.tensor(UID_DK, io, v.bhtd, v.qkv_stride);
    desc_t dv = g.tensor(UID_DV, io, v.bhtd, v.qkv_stride);

    /* sum = rowsum(dO * O), kept in the workspace */
    const int64_t dodo_stride[4] = {v.H * v.T * v.D, v.T * v.D, v.H * v.D, 1};
    desc_t dodo = g.tensor(0, f32, v.bhtd, dodo_stride);
    g.pointwise(CUDNN_POINTWISE_MUL, dout, o, nullptr, dodo);
    desc_t rs = g.tensor(0, f32, v.bht1, v.row_stride);
    g.reduction(CUDNN_REDUCE_TENSOR_ADD, dodo, rs);
    desc_t sum = g.tensor(UID_SUM, f32, v.bht1, v.row_stride);
    g.pointwise(CUDNN_POINTWISE_MUL, rs, g.scalar(UID_ONE), nullptr, sum);

    /* E = exp(Q K^T * scale - stats), masked */
    desc_t s = g.tensor(0, f32, v.bhtt, v.tt_stride);
    g.matmul(q, kt, s);
    desc_t ss = g.tensor(0, f32, v.bhtt, v.tt_stride);
    g.pointwise(CUDNN_POINTWISE_MUL, s, g.scalar(UID_SCALE), nullptr, ss);
    desc_t sl = g.tensor(0, f32, v.bhtt, v.tt_stride);
    g.pointwise(CUDNN_POINTWISE_SUB, ss, stats, nullptr, sl);
    desc_t sm = causal_mask(g, v, sl, causal);
    desc_t e = g.tensor(0, f32, v.bhtt, v.tt_stride);
    g.pointwise(CUDNN_POINTWISE_EXP, sm, nullptr, nullptr, e);

    /* dV = E^T dO */
    desc_t et = g.tensor(0, io, v.bhtt, v.ttT_stride);
    g.reshape(e, et);
    g.matmul(et, dout, dv);

    /* dS = (dO V^T - sum) * E * scale */
    desc_t dp = g.tensor(0, f32, v.bhtt, v.tt_stride);
    g.matmul(dout, vt, dp);
    desc_t d1 = g.tensor(0, f32, v.bhtt, v.tt_stride);
    g.pointwise(CUDNN_POINTWISE_SUB, dp, sum, nullptr, d1);
    desc_t d2 = g.tensor(0, f32, v.bhtt, v.tt_stride);
    g.pointwise(CUDNN_POINTWISE_MUL, d1, e, nullptr, d2);
    desc_t ds = g.tensor(0, f32, v.bhtt, v.tt_stride);
    g.pointwise(CUDNN_POINTWISE_MUL, d2, g.scalar(UID_SCALE), nullptr, ds);

    /* dK = dS^T Q */
    desc_t dst = g.tensor(0, io, v.bhtt, v.ttT_stride);
    g.reshape(ds, dst);
    g.matmul(dst, q, dk);

    /* dQ = dS K, straight into dq (deterministic) or through an fp32 accumulator */
    desc_t k = g.tensor(0, f32, v.bhtd, v.qkv_stride);
    g.reshape(kt, k);
    if (deterministic) {
        g.matmul(ds, k, dq);
    } else {
        const int64_t acc_stride[4] = {v.H * v.T * v.D, v.T * v.D, v.D, 1};
        desc_t acc = g.tensor(UID_DQ_ACCUM, f32, v.bhtd, acc_stride);
        g.matmul(ds, k, acc);
        g.pointwise(CUDNN_POINTWISE_IDENTITY, acc, nullptr, nullptr, dq);
    }
}

} // namespace

/* One planned graph: its execution plan and the ids of its data tensors. */
struct planned {
    desc_t plan = nullptr;
    int64_t workspace = 0;
    char engine[64] = "";
};

struct insitra_cudnn_attention {
    insitra_attention_shape sh;
    bool deterministic;
    cudnnHandle_t handle = nullptr;
    planned fwd, bwd;
    void *ws = nullptr;      /* one buffer: [sum | dq_accum | plan workspace] */
    bool own_ws = false;     /* allocated here (no workspace given) */
    int64_t ws_bytes = 0, sum_off = 0, acc_off = 0, plan_off = 0;
    float scale = 0.f, neg_inf = 0.f, one = 1.f;
    char line[256] = "";
};

namespace {

insitra_status cudnn_fail(const char *what, cudnnStatus_t st, const char *where)
{
    char msg[512] = "";
    cudnnGetLastErrorString(msg, sizeof msg);
    return insitra_error_set(INSITRA_STATUS_DEVICE_ERROR, "cuDNN attention: %s failed at %s: %s%s%s", what, where,
                             cudnnGetErrorString(st), msg[0] ? ": " : "", msg);
}

/* Operation graph, heuristics (mode A), then the first engine configuration
 * that finalizes into a plan (skipping nondeterministic ones if asked), for
 * the GPU of handle h. With h NULL, for the GPU that the device properties
 * devprop describe: there finalizing compiles the engine's kernels but
 * cannot load them without that GPU's driver, so "compiled" is the verdict
 * and no plan is kept. */
insitra_status plan_graph(builder &g, cudnnHandle_t h, desc_t devprop, bool deterministic, planned *out,
                          const char *what)
{
    desc_t graph = g.make(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR);
    if (h) g.set(graph, CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &h);
    g.set(graph, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, g.n_ops, g.ops);
    g.finish(graph, "operation graph");
    desc_t heur = g.make(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR);
    const cudnnBackendHeurMode_t mode = CUDNN_HEUR_MODE_A;
    g.set_desc(heur, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, graph);
    g.set(heur, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode);
    if (!h) g.set_desc(heur, CUDNN_ATTR_ENGINEHEUR_DEVICEPROP, devprop);
    g.finish(heur, "heuristics");
    if (g.st != CUDNN_STATUS_SUCCESS) return cudnn_fail(what, g.st, g.where);

    int64_t n = 0;
    cudnnStatus_t st = cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS,
                                                CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, &n, nullptr);
    if (st != CUDNN_STATUS_SUCCESS) return cudnn_fail(what, st, "heuristics results count");
    if (n <= 0)
        return insitra_error_set(INSITRA_STATUS_DEVICE_ERROR,
                                 "cuDNN attention: heuristics offer no engine for the %s graph", what);
    if (n > 16) n = 16;
    desc_t cfgs[16];
    for (int64_t i = 0; i < n; i++) cfgs[i] = g.make(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR);
    if (g.st != CUDNN_STATUS_SUCCESS) return cudnn_fail(what, g.st, g.where);
    int64_t got = 0;
    st = cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, n, &got,
                                  cfgs);
    if (st != CUDNN_STATUS_SUCCESS) return cudnn_fail(what, st, "heuristics results");

    int skipped_nondet = 0;
    cudnnStatus_t last = CUDNN_STATUS_NOT_SUPPORTED;
    for (int64_t i = 0; i < got; i++) {
        desc_t engine = g.make(CUDNN_BACKEND_ENGINE_DESCRIPTOR);
        if (g.st != CUDNN_STATUS_SUCCESS) return cudnn_fail(what, g.st, g.where);
        int64_t cnt = 0, id = -1;
        cudnnBackendGetAttribute(cfgs[i], CUDNN_ATTR_ENGINECFG_ENGINE, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &cnt,
                                 &engine);
        cudnnBackendGetAttribute(engine, CUDNN_ATTR_ENGINE_GLOBAL_INDEX, CUDNN_TYPE_INT64, 1, &cnt, &id);
        cudnnBackendNumericalNote_t notes[CUDNN_NUMERICAL_NOTE_TYPE_COUNT];
        int64_t n_notes = 0;
        cudnnBackendGetAttribute(engine, CUDNN_ATTR_ENGINE_NUMERICAL_NOTE, CUDNN_TYPE_NUMERICAL_NOTE,
                                 CUDNN_NUMERICAL_NOTE_TYPE_COUNT, &n_notes, notes);
        bool nondet = false;
        for (int64_t j = 0; j < n_notes; j++) nondet |= notes[j] == CUDNN_NUMERICAL_NOTE_NONDETERMINISTIC;
        if (deterministic && nondet) {
            skipped_nondet++;
            continue;
        }
        desc_t plan = nullptr;
        if (cudnnBackendCreateDescriptor(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR, &plan) != CUDNN_STATUS_SUCCESS)
            continue;
        st = h ? cudnnBackendSetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1, &h)
               : cudnnBackendSetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_DEVICEPROP,
                                          CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &devprop);
        if (st == CUDNN_STATUS_SUCCESS)
            st = cudnnBackendSetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG,
                                          CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &cfgs[i]);
        if (st == CUDNN_STATUS_SUCCESS) st = cudnnBackendFinalize(plan);
        if (st == CUDNN_STATUS_SUCCESS)
            st = cudnnBackendGetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1,
                                          &cnt, &out->workspace);
        if (!h && (st == CUDNN_STATUS_SUCCESS || st == CUDNN_STATUS_EXECUTION_FAILED_CUDA_DRIVER)) {
            cudnnBackendDestroyDescriptor(plan);
            snprintf(out->engine, sizeof out->engine, "engine %lld compiled%s", (long long)id,
                     nondet ? " (nondeterministic)" : "");
            return INSITRA_STATUS_OK;
        }
        if (st != CUDNN_STATUS_SUCCESS) {
            last = st;
            cudnnBackendDestroyDescriptor(plan);
            continue;
        }
        out->plan = plan;
        snprintf(out->engine, sizeof out->engine, "engine %lld%s", (long long)id,
                 nondet ? " (nondeterministic)" : "");
        return INSITRA_STATUS_OK;
    }
    if (got == 0) return cudnn_fail(what, CUDNN_STATUS_NOT_SUPPORTED, "support checks of every engine offered");
    if (skipped_nondet == got)
        return insitra_error_set(INSITRA_STATUS_DEVICE_ERROR,
                                 "cuDNN attention: all %lld engines for the %s graph are nondeterministic",
                                 (long long)got, what);
    return cudnn_fail(what, last, "execution plan of every engine offered");
}

insitra_status execute(insitra_cudnn_attention *a, const planned &p, int n, const int64_t *uids, void **ptrs,
                       cudaStream_t s)
{
    cudnnStatus_t st = cudnnSetStream(a->handle, s);
    if (st != CUDNN_STATUS_SUCCESS) return cudnn_fail("set stream", st, "execute");
    desc_t pack = nullptr;
    st = cudnnBackendCreateDescriptor(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, &pack);
    if (st != CUDNN_STATUS_SUCCESS) return cudnn_fail("variant pack", st, "create");
    void *ws = (char *)a->ws + a->plan_off;
    st = cudnnBackendSetAttribute(pack, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, n, uids);
    if (st == CUDNN_STATUS_SUCCESS)
        st = cudnnBackendSetAttribute(pack, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, n, ptrs);
    if (st == CUDNN_STATUS_SUCCESS)
        st = cudnnBackendSetAttribute(pack, CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &ws);
    if (st == CUDNN_STATUS_SUCCESS) st = cudnnBackendFinalize(pack);
    if (st == CUDNN_STATUS_SUCCESS) st = cudnnBackendExecute(a->handle, p.plan, pack);
    cudnnBackendDestroyDescriptor(pack);
    return st == CUDNN_STATUS_SUCCESS ? INSITRA_STATUS_OK : cudnn_fail("execute", st, p.engine);
}

int64_t align_up(int64_t x) { return (x + 255) / 256 * 256; }

/* What this module builds no graph for, named. */
insitra_status check_shape(const insitra_attention_shape *sh, size_t version)
{
    if (!sh->bf16)
        return insitra_error_set(INSITRA_STATUS_DEVICE_ERROR, "cuDNN attention: fp32 is not offered (bf16 only)");
    const int64_t D = sh->C / sh->H;
    if (D % 8 != 0 || D > 128)
        return insitra_error_set(INSITRA_STATUS_DEVICE_ERROR,
                                 "cuDNN attention: head size %lld not offered (a multiple of 8 up to 128)",
                                 (long long)D);
    if (version < INSITRA_CUDNN_MIN_VERSION)
        return insitra_error_set(INSITRA_STATUS_DEVICE_ERROR, "cuDNN attention: cuDNN %zu found, %d or later needed",
                                 version, INSITRA_CUDNN_MIN_VERSION);
    /* cuDNN before 9.16 computes the backward wrongly without a padding mask
     * when T is not a multiple of 128 (the cudnn-frontend adds one then);
     * this module builds no padding mask, so it leaves such T to our kernel. */
    if (sh->T % 128 != 0 && version < 91600)
        return insitra_error_set(INSITRA_STATUS_DEVICE_ERROR,
                                 "cuDNN attention: T=%lld is not a multiple of 128 (needed before cuDNN 9.16, "
                                 "found %zu)",
                                 (long long)sh->T, version);
    return INSITRA_STATUS_OK;
}

/* Both graphs of sh planned into fwd and bwd, for handle h or devprop. */
insitra_status plan_both(const insitra_attention_shape *sh, bool deterministic, cudnnHandle_t h, desc_t devprop,
                         planned *fwd, planned *bwd)
{
    const views v(sh);
    insitra_status st;
    {
        builder g;
        build_forward(g, v, sh->causal);
        st = g.st != CUDNN_STATUS_SUCCESS ? cudnn_fail("forward graph", g.st, g.where)
                                          : plan_graph(g, h, devprop, false, fwd, "forward");
        g.release();
    }
    if (st != INSITRA_STATUS_OK) return st;
    builder g;
    build_backward(g, v, sh->causal, deterministic);
    st = g.st != CUDNN_STATUS_SUCCESS ? cudnn_fail("backward graph", g.st, g.where)
                                      : plan_graph(g, h, devprop, deterministic, bwd, "backward");
    g.release();
    return st;
}

/* One forward and backward on zeros, on scratch freed afterwards: cuDNN's
 * lazy work (kernel loading) happens here rather than inside a step being
 * recorded as a CUDA graph, and an engine that fails on this machine is
 * found while the caller can still take its own kernels. */
insitra_status trial_run(insitra_cudnn_attention *a)
{
    const int64_t n = a->sh.B * a->sh.T * a->sh.C, rows = a->sh.B * a->sh.H * a->sh.T;
    void *qkv = nullptr, *out = nullptr, *dout = nullptr, *dqkv = nullptr, *stats = nullptr;
    insitra_status st = INSITRA_STATUS_OK;
    cudaError_t e = cudaMalloc(&qkv, (size_t)(3 * n) * 2);
    if (e == cudaSuccess) e = cudaMalloc(&dqkv, (size_t)(3 * n) * 2);
    if (e == cudaSuccess) e = cudaMalloc(&out, (size_t)n * 2);
    if (e == cudaSuccess) e = cudaMalloc(&dout, (size_t)n * 2);
    if (e == cudaSuccess) e = cudaMalloc(&stats, (size_t)rows * sizeof(float));
    if (e == cudaSuccess) e = cudaMemset(qkv, 0, (size_t)(3 * n) * 2);
    if (e == cudaSuccess) e = cudaMemset(dout, 0, (size_t)n * 2);
    if (e != cudaSuccess)
        st = insitra_error_set(INSITRA_STATUS_OUT_OF_MEMORY, "cuDNN attention: scratch of the trial run: %s",
                               cudaGetErrorString(e));
    if (st == INSITRA_STATUS_OK) st = insitra_cudnn_attention_forward(a, out, (float *)stats, qkv, 0);
    if (st == INSITRA_STATUS_OK)
        st = insitra_cudnn_attention_backward(a, dqkv, dout, qkv, out, (const float *)stats, 0);
    if (st == INSITRA_STATUS_OK && (e = cudaDeviceSynchronize()) != cudaSuccess)
        st = insitra_error_set(INSITRA_STATUS_DEVICE_ERROR, "cuDNN attention: trial run: %s",
                               cudaGetErrorString(e));
    cudaFree(qkv), cudaFree(dqkv), cudaFree(out), cudaFree(dout), cudaFree(stats);
    return st;
}

} // namespace

extern "C" {

insitra_status insitra_cudnn_attention_create(insitra_cudnn_attention **out, const insitra_attention_shape *sh,
                                              bool deterministic, void *workspace, int64_t workspace_bytes)
{
    *out = nullptr;
    const size_t version = cudnnGetVersion();
    INSITRA_CHECK(check_shape(sh, version));
    const int64_t D = sh->C / sh->H;
    insitra_cudnn_attention *a = new insitra_cudnn_attention();
    a->sh = *sh, a->deterministic = deterministic;
    a->scale = 1.f / sqrtf((float)D);
    a->neg_inf = -std::numeric_limits<float>::infinity();
    insitra_status st = INSITRA_STATUS_OK;
    cudnnStatus_t cs = cudnnCreate(&a->handle);
    if (cs != CUDNN_STATUS_SUCCESS) st = cudnn_fail("cudnnCreate", cs, "create");
    if (st == INSITRA_STATUS_OK) st = plan_both(sh, deterministic, a->handle, nullptr, &a->fwd, &a->bwd);
    if (st == INSITRA_STATUS_OK) {
        const int64_t rows = sh->B * sh->H * sh->T;
        a->sum_off = 0;
        a->acc_off = align_up(rows * (int64_t)sizeof(float));
        a->plan_off = a->acc_off + (deterministic ? 0 : align_up(rows * D * (int64_t)sizeof(float)));
        a->ws_bytes = a->plan_off + align_up(a->fwd.workspace > a->bwd.workspace ? a->fwd.workspace
                                                                                  : a->bwd.workspace);
        if (workspace && a->ws_bytes > workspace_bytes) {
            st = insitra_error_set(INSITRA_STATUS_DEVICE_ERROR,
                                   "cuDNN attention: its plans need %lld bytes of workspace, %lld reserved "
                                   "(insitra_gpu_sdpa_bytes)",
                                   (long long)a->ws_bytes, (long long)workspace_bytes);
        } else if (workspace) {
            a->ws = workspace;
        } else {
            cudaError_t e = cudaMalloc(&a->ws, (size_t)a->ws_bytes);
            a->own_ws = e == cudaSuccess;
            if (e != cudaSuccess)
                st = insitra_error_set(INSITRA_STATUS_OUT_OF_MEMORY,
                                       "cuDNN attention: workspace of %lld bytes: %s", (long long)a->ws_bytes,
                                       cudaGetErrorString(e));
        }
    }
    if (st == INSITRA_STATUS_OK) st = trial_run(a);
    if (st != INSITRA_STATUS_OK) {
        insitra_cudnn_attention_free(a);
        return st;
    }
    snprintf(a->line, sizeof a->line,
             "cuDNN %zu SDPA: forward %s, backward %s (%s), workspace %.1f MiB", version, a->fwd.engine,
             a->bwd.engine, deterministic ? "deterministic" : "fp32 dQ accumulation", a->ws_bytes / 1048576.0);
    *out = a;
    return INSITRA_STATUS_OK;
}

insitra_status insitra_cudnn_attention_plan_offline(const insitra_attention_shape *sh, bool deterministic,
                                                    const char *device_json, char *line, size_t line_len)
{
    if (line_len) line[0] = 0;
    const size_t version = cudnnGetVersion();
    INSITRA_CHECK(check_shape(sh, version));
    desc_t devprop = nullptr;
    cudnnStatus_t cs = cudnnBackendCreateDescriptor(CUDNN_BACKEND_DEVICEPROP_DESCRIPTOR, &devprop);
    if (cs == CUDNN_STATUS_SUCCESS)
        cs = cudnnBackendSetAttribute(devprop, CUDNN_ATTR_DEVICEPROP_JSON_REPRESENTATION, CUDNN_TYPE_CHAR,
                                      (int64_t)strlen(device_json) + 1, device_json);
    if (cs == CUDNN_STATUS_SUCCESS) cs = cudnnBackendFinalize(devprop);
    insitra_status st = cs == CUDNN_STATUS_SUCCESS ? INSITRA_STATUS_OK
                                                   : cudnn_fail("device properties", cs, "from JSON");
    planned fwd, bwd;
    if (st == INSITRA_STATUS_OK) st = plan_both(sh, deterministic, nullptr, devprop, &fwd, &bwd);
    if (st == INSITRA_STATUS_OK)
        snprintf(line, line_len, "cuDNN %zu SDPA, no GPU: forward %s, backward %s", version, fwd.engine,
                 bwd.engine);
    if (devprop) cudnnBackendDestroyDescriptor(devprop);
    return st;
}

void insitra_cudnn_attention_free(insitra_cudnn_attention *a)
{
    if (!a) return;
    if (a->fwd.plan) cudnnBackendDestroyDescriptor(a->fwd.plan);
    if (a->bwd.plan) cudnnBackendDestroyDescriptor(a->bwd.plan);
    if (a->handle) cudnnDestroy(a->handle);
    if (a->own_ws) cudaFree(a->ws);
    delete a;
}

int64_t insitra_cudnn_attention_workspace_bytes(const insitra_cudnn_attention *a) { return a->ws_bytes; }

const char *insitra_cudnn_attention_describe(const insitra_cudnn_attention *a) { return a->line; }

insitra_status insitra_cudnn_attention_forward(insitra_cudnn_attention *a, void *out, float *stats, const void *qkv,
                                               cudaStream_t s)
{
    const int64_t C = a->sh.C;
    const char *base = (const char *)qkv;
    const int64_t uids[] = {UID_Q, UID_K, UID_V, UID_O, UID_STATS, UID_SCALE, UID_NEG_INF};
    void *ptrs[] = {(void *)base, (void *)(base + 2 * C), (void *)(base + 4 * C), out, stats, &a->scale,
                    &a->neg_inf};
    return execute(a, a->fwd, a->sh.causal ? 7 : 6, uids, ptrs, s);
}

insitra_status insitra_cudnn_attention_backward(insitra_cudnn_attention *a, void *dqkv, const void *dout,
                                                const void *qkv, const void *out, const float *stats,
                                                cudaStream_t s)
{
    const int64_t C = a->sh.C;
    const char *base = (const char *)qkv;
    char *dbase = (char *)dqkv;
    int64_t uids[] = {UID_Q,  UID_K,  UID_V,     UID_O,   UID_STATS, UID_DO,      UID_DQ,
                      UID_DK, UID_DV, UID_SCALE, UID_ONE, UID_SUM,   UID_NEG_INF, UID_DQ_ACCUM};
    void *ptrs[] = {(void *)base,
                    (void *)(base + 2 * C),
                    (void *)(base + 4 * C),
                    (void *)out,
                    (void *)stats,
                    (void *)dout,
                    dbase,
                    dbase + 2 * C,
                    dbase + 4 * C,
                    &a->scale,
                    &a->one,
                    (char *)a->ws + a->sum_off,
                    &a->neg_inf,
                    (char *)a->ws + a->acc_off};
    /* the optional ids last: neg_inf only when causal, the accumulator only
     * on the fp32-accumulation graph */
    int n = 12;
    if (a->sh.causal) n++;
    if (!a->deterministic) {
        if (!a->sh.causal) uids[12] = uids[13], ptrs[12] = ptrs[13];
        n++;
    }
    return execute(a, a->bwd, n, uids, ptrs, s);
}

} /* extern "C" */
