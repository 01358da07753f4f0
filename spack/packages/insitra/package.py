# Spack package for insitra. See docs/install.md ("Spack").
#
# Spack 0.23 or newer: `depends_on("c")` names a compiler as a dependency, and
# 0.22 has no package `c`. Checked with Spack 1.1 by the project's
# shared/spack-offline/check.sh.

import os
import re

from spack.package import *


def _checkout():
    """The git checkout holding this package repository (spack/packages/insitra/)."""
    return os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))


def _sm(arch):
    """The compute capability of a cuda_arch value as a number: "90a" -> 90."""
    return int(re.match(r"\d+", arch).group(0))


class Insitra(CMakePackage, CudaPackage):
    """In-situ transformer training for MPI simulation codes: a C library, with
    a Fortran 2008 module, that lets a running simulation train a transformer
    surrogate of its own physics; each rank trains on the samples of its own
    subdomain and only gradients travel."""

    # No public release or web site yet: the source is the committed state of
    # branch main of the git checkout this repository lives in, and that
    # checkout's README is the front page. `spack develop insitra@main` builds
    # a working tree with uncommitted changes instead.
    homepage = "file://" + os.path.join(_checkout(), "README.md")
    git = "file://" + _checkout()

    version("main", branch="main")

    variant("fortran", default=False, description="Build the Fortran module (use insitra)")
    variant(
        "shared", default=False, description="Build shared libraries instead of libinsitra.a"
    )
    # The CUDA backend runs its collectives through NCCL and has no other
    # path: the variant exists only with +cuda, and only as +nccl (CMake's
    # INSITRA_ENABLE_CUDA brings NCCL; the variant says so to the concretizer).
    variant("nccl", default=True, when="+cuda", description="NCCL collectives (needed by +cuda)")
    conflicts("~nccl", when="+cuda", msg="the CUDA backend runs its collectives through NCCL")
    # bf16 attention through cuDNN 9's fused SDPA (deterministic backward);
    # without it the CUDA backend runs insitra's own fused attention kernels.
    variant("cudnn", default=True, when="+cuda", description="cuDNN 9 fused attention on the GPU")

    depends_on("c", type="build")
    # nvcc compiles the host side of .cu files with the C++ compiler.
    depends_on("cxx", type="build", when="+cuda")
    depends_on("fortran", type="build", when="+fortran")
    # run: find_package(insitra) users and the smoke test configure with CMake
    # and find libyaml through pkg-config, as insitraConfig.cmake does.
    depends_on("cmake@3.24:", type=("build", "run"))
    depends_on("pkgconfig", type=("build", "run"))

    depends_on("mpi")
    depends_on("hdf5+mpi")
    # The CBLAS interface: any provider with cblas.h and the cblas_* symbols
    # (cmake_args passes both; CMake checks that cblas_sgemm links).
    depends_on("blas")
    # Attention calls sgemm inside OpenMP loops: OpenBLAS must use OpenMP.
    depends_on("openblas threads=openmp", when="^[virtuals=blas] openblas")
    depends_on("libyaml")
    # bf16 GEMMs in cuBLASLt, graph capture of NCCL calls
    depends_on("cuda@12:", when="+cuda")
    depends_on("nccl@2.18:", when="+nccl")
    depends_on("cudnn@9:", when="+cudnn")

    conflicts(
        "cuda_arch=none",
        when="+cuda",
        msg="name the GPU architecture, e.g. cuda_arch=90 for H100 and H200",
    )
    for _arch in CudaPackage.cuda_arch_values:
        if _sm(_arch) < 80:
            # bf16 tensor cores: Ampere (sm_80) and newer
            conflicts(
                f"cuda_arch={_arch}", when="+cuda", msg="the CUDA backend needs sm_80 or newer (bf16)"
            )
        else:
            # NCCL's kernels for the GPUs we build for (the CudaPackage idiom)
            depends_on(f"nccl cuda_arch={_arch}", when=f"+nccl cuda_arch={_arch}")
    conflicts(
        "^[virtuals=mpi] mpich~fortran", when="+fortran", msg="the Fortran module uses mpi_f08"
    )

    test_requires_compiler = True

    def setup_build_environment(self, env):
        # CMake looks for cudnn_graph.h and libcudnn under CUDNN_ROOT first.
        if self.spec.satisfies("+cudnn"):
            env.set("CUDNN_ROOT", self.spec["cudnn"].prefix)

    def cmake_args(self):
        spec = self.spec
        args = [
            self.define_from_variant("INSITRA_ENABLE_FORTRAN", "fortran"),
            self.define_from_variant("INSITRA_ENABLE_CUDA", "cuda"),
            self.define_from_variant("BUILD_SHARED_LIBS", "shared"),
            # insitra's name for BUILD_TESTING: tests, examples, benchmarks.
            self.define("INSITRA_ENABLE_TESTING", self.run_tests),
            self.define("MPI_C_COMPILER", spec["mpi"].mpicc),
            # The provider Spack chose, not whatever FindBLAS would find first.
            self.define("BLAS_LIBRARIES", spec["blas"].libs.joined(";")),
            self.define("INSITRA_CBLAS_INCLUDE_DIR", self._cblas_include_dir()),
            # The linear layers' GEMMs from that provider too: the default
            # (AUTO) would take a oneDNN found outside the spec.
            self.define("INSITRA_CPU_GEMM", "BLAS"),
        ]
        if spec.satisfies("+fortran"):
            args.append(self.define("MPI_Fortran_COMPILER", spec["mpi"].mpifc))
        if spec.satisfies("+cuda"):
            args.append(self.define_from_variant("CMAKE_CUDA_ARCHITECTURES", "cuda_arch"))
            # Spack's choice, not a cuDNN CMake happens to find beside the toolkit.
            args.append(self.define_from_variant("INSITRA_ENABLE_CUDNN", "cudnn"))
        return args

    def _cblas_include_dir(self):
        """The directory of the BLAS provider's cblas.h; an error naming the provider if none."""
        blas = self.spec["blas"]
        try:
            headers = blas.headers
        except NoHeadersError:
            headers = HeaderList([])
        for header in headers:
            if os.path.basename(header) == "cblas.h":
                return os.path.dirname(header)
        raise InstallError(
            f"the BLAS provider {blas.name} has no cblas.h under {blas.prefix}: insitra calls "
            "the CBLAS interface (cblas_sgemm); choose a provider that ships it, e.g. "
            "^[virtuals=blas] openblas"
        )

    def _compiler(self, language):
        """The path of the spec's compiler for "c" or "fortran"."""
        if language in self.spec:  # Spack 1.x: compilers are dependencies
            package = self.spec[language].package
            return package.cc if language == "c" else package.fortran
        return self.compiler.cc if language == "c" else self.compiler.fc  # Spack 0.23

    def test_synthetic_train(self):
        """build the installed examples against insitra, run synthetic_train on one rank"""
        spec = self.spec
        prefixes = [self.prefix]
        prefixes += [dep.prefix for dep in spec.traverse(root=False, deptype=("link", "run"))]
        # The compilers insitra was built with: the installed .mod files are
        # read only by the Fortran compiler that wrote them.
        options = [
            "-S",
            self.prefix.share.insitra.examples,
            "-B",
            "build",
            self.define("CMAKE_PREFIX_PATH", prefixes),
            self.define("CMAKE_C_COMPILER", self._compiler("c")),
            self.define("MPI_HOME", spec["mpi"].prefix),
        ]
        if spec.satisfies("+fortran"):
            options.append(
                self.define("CMAKE_Fortran_COMPILER", self._compiler("fortran"))
            )
        cmake = which(spec["cmake"].prefix.bin.cmake, required=True)
        cmake(*options)
        cmake("--build", "build")

        launcher = which("mpiexec", path=spec["mpi"].prefix.bin) or which("srun")
        if launcher is None:
            raise SkipTest("no mpiexec in the MPI prefix and no srun: cannot start the example")
        out = launcher("-n", "1", join_path("build", "c", "synthetic_train"), output=str, error=str)
        assert "held-out relative L2 error" in out, out
